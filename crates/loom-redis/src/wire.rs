//! [`Wire`]: the connection of a blocking reader (the hub's `XREAD`, the worker's
//! `XREADGROUP`) and of a run's writer (`publisher.rs`), which reads RESP2 replies into
//! [`Reply`]s (or walks them, [`Walk`]) whose strings are slices of the bytes read
//! ([`Bytes`]), not one allocation each.
//!
//! Reading streams is Loom's hot path: an `XREAD` reply carries, per entry, an id and six or
//! more field strings. The redis crate parses every reply into a tree of `Value`s with a
//! `Vec<u8>` per string; profiled end to end, that parser and its allocations were the largest
//! share of the reading process's CPU (docs/performance-history.md). A blocking read needs little of
//! a connection's machinery — one command at a time, no pipelining, no pub/sub — so it speaks
//! RESP2 itself: the command is packed by the redis crate ([`Cmd`]), the reply parsed here,
//! and an error reply handed back to the redis crate to become a [`redis::RedisError`] with its
//! kind and code (`MOVED`, `ASK`, `NOAUTH`, …). Reading the reply also happens in the reading
//! task itself, without a connection task in between; that is also why a writer sends its
//! batches on one (as a [`ConnectionLike`](redis::aio::ConnectionLike), so the scripts of
//! `script.rs` run on it unchanged).

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use redis::{Cmd, ConnectionAddr, ConnectionInfo, RedisError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::Error;

/// How long one command may take before the connection counts as broken.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long connecting may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How much room each socket read asks for: an `XREAD` reply of 1,024 token entries is about
/// 100 KiB, and a reply is scanned again from its start after each read until it is whole.
const READ_SIZE: usize = 64 * 1024;

/// Replies shorter than this are copied out of the read buffer (see [`parse`]).
const OWN_BUFFER_BELOW: usize = 4 * 1024;

/// Nesting a reply may have: `XREAD`'s is four deep (streams, stream, entries, entry, fields).
const MAX_DEPTH: usize = 8;

/// One RESP2 reply, its strings sharing the bytes they were read into.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// A nil bulk string or array (`$-1`, `*-1`): an `XREAD` that timed out or was woken.
    Nil,
    /// An integer (`:`).
    Int(i64),
    /// A simple (`+`) or bulk (`$`) string.
    Text(Bytes),
    /// An array (`*`).
    Array(Vec<Reply>),
}

/// A stream to a server: TCP, or a Unix socket.
trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// A blocking reader's or a writer's connection (see the module docs).
pub(crate) struct Wire {
    io: Box<dyn Io>,
    incoming: Incoming,
    /// The connection's client id (for `CLIENT UNBLOCK`), once asked.
    id: Option<i64>,
    /// How long one reply may take: the read's block plus the usual response timeout.
    timeout: Duration,
    /// The database selected.
    db: i64,
    /// The server it is connected to: `host:port`, or a Unix socket's path.
    node: String,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire").finish_non_exhaustive()
    }
}

impl Wire {
    /// Connects to `info`'s server as its user (`AUTH`) and database (`SELECT`), for commands
    /// that may block for `block`.
    pub(crate) async fn connect(info: &ConnectionInfo, block: Duration) -> Result<Self, Error> {
        let connect = async {
            Ok::<Box<dyn Io>, std::io::Error>(match info.addr() {
                ConnectionAddr::Tcp(host, port) => {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    tcp.set_nodelay(true)?;
                    Box::new(tcp)
                }
                ConnectionAddr::Unix(path) => {
                    Box::new(tokio::net::UnixStream::connect(path).await?)
                }
                other => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        format!("unsupported address {other:?}"),
                    ))
                }
            })
        };
        let node = node_of(info);
        let io = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| timed_out("connecting"))?
            .map_err(|e| Error::Redis(e.into()))?;
        let mut wire = Self {
            io,
            incoming: Incoming::default(),
            id: None,
            timeout: block + RESPONSE_TIMEOUT,
            db: info.redis_settings().db(),
            node,
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            wire.query(&auth).await?;
        }
        if settings.db() != 0 {
            wire.query(redis::cmd("SELECT").arg(settings.db())).await?;
        }
        Ok(wire)
    }

    /// The server it is connected to (see [`node_of`]).
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// The connection's client id, asked once.
    pub(crate) async fn client_id(&mut self) -> Result<i64, Error> {
        if let Some(id) = self.id {
            return Ok(id);
        }
        let id = match self.query(redis::cmd("CLIENT").arg("ID")).await? {
            Reply::Int(id) => id,
            other => return Err(Error::UnexpectedReply(format!("CLIENT ID: {other:?}"))),
        };
        self.id = Some(id);
        Ok(id)
    }

    /// Sends `cmd` and reads its reply; an error reply is [`Error::Redis`] with the server's
    /// kind and code.
    pub(crate) async fn query(&mut self, cmd: &Cmd) -> Result<Reply, Error> {
        let mut frame = self.query_frame(cmd).await?;
        build(&mut frame)
    }

    /// Sends `cmd` and returns its reply's bytes, whole and checked, to be read with a
    /// [`Walk`]; an error reply is [`Error::Redis`] as for [`query`](Self::query).
    pub(crate) async fn query_frame(&mut self, cmd: &Cmd) -> Result<Bytes, Error> {
        let packed = cmd.get_packed_command();
        let io = |e: std::io::Error| Error::Redis(e.into());
        let exchange = async {
            self.io.write_all(&packed).await.map_err(io)?;
            loop {
                if let Some(frame) = self.incoming.take_frame()? {
                    return frame;
                }
                self.incoming.buf.reserve(READ_SIZE);
                if self.io.read_buf(&mut self.incoming.buf).await.map_err(io)? == 0 {
                    return Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ))
                    .into());
                }
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| timed_out("waiting for a reply"))?
    }
}

impl redis::aio::ConnectionLike for Wire {
    /// One command and its reply, in the calling task (how a writer sends its batches).
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            match self.query(cmd).await {
                Ok(reply) => Ok(reply.into()),
                Err(Error::Redis(e)) => Err(e),
                Err(other) => Err(RedisError::from((
                    redis::ErrorKind::Parse,
                    "an unreadable reply",
                    other.to_string(),
                ))),
            }
        })
    }

    /// Pipelines are not sent on a `Wire`: Loom sends each of its batches as one script call.
    fn req_packed_commands<'a>(
        &'a mut self,
        _pipeline: &'a redis::Pipeline,
        _offset: usize,
        _count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async {
            Err(RedisError::from((
                redis::ErrorKind::Client,
                "pipelines are not sent on this connection",
            )))
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

impl From<Reply> for redis::Value {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Nil => Self::Nil,
            Reply::Int(n) => Self::Int(n),
            Reply::Text(bytes) => Self::BulkString(bytes.to_vec()),
            Reply::Array(items) => Self::Array(items.into_iter().map(Self::from).collect()),
        }
    }
}

/// The server `info` reaches, as a [`Wire`] names it: `host:port` (as a cluster's `MOVED`
/// names a node), or a Unix socket's path.
pub(crate) fn node_of(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
        other => format!("{other:?}"),
    }
}

fn timed_out(what: &str) -> Error {
    Error::Redis(RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("timed out {what}"),
    )))
}

/// Takes one whole reply off the front of `incoming`: `Ok(None)` while it is incomplete
/// (nothing is consumed then); `Ok(Some(Err))` for an error reply; `Err` for bytes that are not
/// RESP2.
#[cfg(test)]
fn parse(incoming: &mut Incoming) -> Result<Option<Result<Reply, Error>>, Error> {
    Ok(incoming
        .take_frame()?
        .map(|frame| frame.and_then(|mut frame| build(&mut frame))))
}

/// The bytes read from a connection, and how far the reply at their front has been checked:
/// a reply that arrives in many reads (an `XREAD` of thousands of entries, megabytes) is
/// checked once, each read going on where the one before stopped, not from its start again.
#[derive(Default)]
struct Incoming {
    buf: BytesMut,
    /// Where the next item to check starts.
    at: usize,
    /// How many items are still to come in each array the check is inside, outermost first.
    open: Vec<i64>,
}

impl Incoming {
    /// Takes one whole reply's bytes off the front of the buffer (see [`parse`]).
    fn take_frame(&mut self) -> Result<Option<Result<Bytes, Error>>, Error> {
        let Some(end) = self.scan()? else {
            return Ok(None);
        };
        self.at = 0;
        let frame = self.buf.split_to(end);
        // A reply's strings keep the buffer they were read into alive until their last
        // reader took them (a slow consumer holds up to two batches). A small reply gets a
        // buffer of its own, so it never holds a whole read buffer.
        let frame = if frame.len() < OWN_BUFFER_BELOW {
            Bytes::copy_from_slice(&frame)
        } else {
            frame.freeze()
        };
        if frame.first() == Some(&b'-') {
            // The redis crate turns the error line into its error, kind and code included.
            let error = redis::parse_redis_value(&frame)
                .and_then(redis::Value::extract_error)
                .err()
                .unwrap_or_else(|| RedisError::from((redis::ErrorKind::Parse, "an error reply")));
            return Ok(Some(Err(error.into())));
        }
        Ok(Some(Ok(frame)))
    }

    /// The end of the reply at the front of the buffer, once it is all there; `None` until
    /// then, having checked what is there.
    fn scan(&mut self) -> Result<Option<usize>, Error> {
        loop {
            let Some((kind, n, next)) = head(&self.buf, self.at)? else {
                return Ok(None);
            };
            match kind {
                b'+' | b'-' | b':' => self.at = next,
                b'$' if n < 0 => self.at = next,
                b'$' => {
                    let end = next + n as usize + 2;
                    if self.buf.len() < end {
                        return Ok(None);
                    }
                    if &self.buf[end - 2..end] != b"\r\n" {
                        return Err(malformed("a bulk string longer than its length"));
                    }
                    self.at = end;
                }
                b'*' => {
                    self.at = next;
                    if n > 0 {
                        if self.open.len() >= MAX_DEPTH {
                            return Err(malformed("nested too deeply"));
                        }
                        // It fills its place in the array holding it once its items are in.
                        self.open.push(n);
                        continue;
                    }
                }
                other => {
                    return Err(malformed(&format!(
                        "unknown reply type {:?}",
                        other as char
                    )))
                }
            }
            // An item is in: one place less in the array holding it, which may complete it.
            loop {
                let Some(left) = self.open.last_mut() else {
                    return Ok(Some(self.at));
                };
                *left -= 1;
                if *left > 0 {
                    break;
                }
                self.open.pop();
            }
        }
    }
}

/// Reads one whole reply's bytes (as [`Wire::query_frame`] returns them) item by item,
/// without building [`Reply`]s: a stream entry's fields stay one slice of the bytes read
/// ([`Strings`]), not a vector of strings each holding a reference to them.
pub(crate) struct Walk {
    frame: Bytes,
    at: usize,
}

impl Walk {
    /// Walks `frame` from its start.
    pub(crate) fn new(frame: Bytes) -> Self {
        Self { frame, at: 0 }
    }

    /// The next item, an array: its length, or `None` for a nil.
    pub(crate) fn array(&mut self) -> Result<Option<usize>, Error> {
        match header(&self.frame, &mut self.at)? {
            (b'*', n, _) if n >= 0 => Ok(Some(n as usize)),
            (b'*' | b'$', -1, _) => Ok(None),
            _ => Err(malformed("an array expected")),
        }
    }

    /// The next item, a string.
    pub(crate) fn text(&mut self) -> Result<&[u8], Error> {
        let (start, end) = skip_text(&self.frame, &mut self.at)?;
        Ok(&self.frame[start..end])
    }

    /// The next `count` items, strings, as one [`Strings`].
    pub(crate) fn strings(&mut self, count: usize) -> Result<Strings, Error> {
        let start = self.at;
        for _ in 0..count {
            skip_text(&self.frame, &mut self.at)?;
        }
        Ok(Strings {
            raw: self.frame.slice(start..self.at),
            count,
        })
    }
}

/// The header line of the item at `*at` in `buf`: its type, its number (`0` for a simple
/// string) and where it starts; `*at` moves past the line.
fn header(buf: &[u8], at: &mut usize) -> Result<(u8, i64, usize), Error> {
    let Some((kind, n, next)) = head(buf, *at)? else {
        return Err(malformed("a reply ended early"));
    };
    let start = *at;
    *at = next;
    Ok((kind, n, start))
}

/// Steps `*at` over the string at `*at` in `buf`; where its text starts and ends.
fn skip_text(buf: &[u8], at: &mut usize) -> Result<(usize, usize), Error> {
    match header(buf, at)? {
        (b'+', _, start) => Ok((start + 1, *at - 2)),
        (b'$', len, _) if len >= 0 => {
            let (start, end) = (*at, *at + len as usize);
            if buf.len() < end + 2 {
                return Err(malformed("a reply ended early"));
            }
            *at = end + 2;
            Ok((start, end))
        }
        _ => Err(malformed("a string expected")),
    }
}

/// Strings kept as the RESP they were read as (`$<length>\r\n<text>\r\n` each), one slice
/// of the reply's bytes for all of them: a stream entry's `field value …` list.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Strings {
    raw: Bytes,
    count: usize,
}

impl Strings {
    /// Writes `texts` as RESP, for strings that did not come from a [`Walk`] (replies the
    /// redis crate parsed, tests).
    pub(crate) fn encode<'a>(texts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut raw = Vec::new();
        let mut count = 0;
        for text in texts {
            raw.extend_from_slice(format!("${}\r\n", text.len()).as_bytes());
            raw.extend_from_slice(text);
            raw.extend_from_slice(b"\r\n");
            count += 1;
        }
        Self {
            raw: raw.into(),
            count,
        }
    }

    /// How many strings.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The strings, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let (raw, mut at) = (&self.raw[..], 0);
        std::iter::from_fn(move || {
            // Checked when read: a `Strings` holds `count` whole strings and nothing else.
            let (start, end) = skip_text(raw, &mut at).ok()?;
            Some(&raw[start..end])
        })
        .take(self.count)
    }
}

impl std::fmt::Debug for Strings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

/// The reply at the front of `at` (already checked whole by [`Incoming::scan`]); its strings are slices
/// of `at`'s bytes.
fn build(at: &mut Bytes) -> Result<Reply, Error> {
    let Some((kind, n, next)) = head(at, 0)? else {
        return Err(malformed("a reply ended early"));
    };
    match kind {
        b'+' => {
            let text = at.slice(1..next - 2);
            at.advance(next);
            Ok(Reply::Text(text))
        }
        b':' => {
            at.advance(next);
            Ok(Reply::Int(n))
        }
        b'$' => {
            let len = n;
            if len < 0 {
                at.advance(next);
                return Ok(Reply::Nil);
            }
            let text = at.slice(next..next + len as usize);
            at.advance(next + len as usize + 2);
            Ok(Reply::Text(text))
        }
        b'*' => {
            let count = n;
            at.advance(next);
            if count < 0 {
                return Ok(Reply::Nil);
            }
            let mut items = Vec::with_capacity(count as usize);
            for _ in 0..count {
                items.push(build(at)?);
            }
            Ok(Reply::Array(items))
        }
        _ => Err(malformed("an unexpected reply type")),
    }
}

/// Where the next line starts after the text line (`+…`, `-…`) starting at `at`, once it
/// is all there.
fn line_end(buf: &[u8], at: usize) -> Result<Option<usize>, Error> {
    let Some(end) = buf
        .get(at..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    else {
        return Ok(None);
    };
    let end = at + end;
    if end == at || buf[end - 1] != b'\r' {
        return Err(malformed("a line without \\r\\n"));
    }
    Ok(Some(end + 1))
}

/// The header line of the item starting at `at`, once it is all there: its type byte, its
/// number (a length, a count or an integer; `0` for a simple string or an error) and where the
/// next line starts. The number is read in the same pass that looks for the line's end: this
/// runs for every string of every reply.
fn head(buf: &[u8], at: usize) -> Result<Option<(u8, i64, usize)>, Error> {
    let kind = match buf.get(at) {
        None => return Ok(None),
        Some(&kind @ (b'+' | b'-')) => {
            return Ok(line_end(buf, at)?.map(|next| (kind, 0, next)));
        }
        Some(&kind) => kind,
    };
    let bad = || malformed("a length or integer that is not a number");
    let mut i = at + 1;
    let sign = if buf.get(i) == Some(&b'-') {
        i += 1;
        -1
    } else {
        1
    };
    let digits = i;
    // Accumulated with its sign, so `i64::MIN` fits too.
    let mut n = 0i64;
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(&d) if d.is_ascii_digit() => {
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(sign * i64::from(d - b'0')))
                    .ok_or_else(bad)?;
                i += 1;
            }
            Some(b'\r') if i > digits => break,
            Some(_) => return Err(bad()),
        }
    }
    match buf.get(i + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((kind, n, i + 2))),
        Some(_) => Err(malformed("a line without \\r\\n")),
    }
}

fn malformed(why: &str) -> Error {
    Error::UnexpectedReply(format!("malformed RESP reply: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(bytes: &[u8]) -> Incoming {
        Incoming {
            buf: BytesMut::from(bytes),
            ..Incoming::default()
        }
    }

    fn parsed(bytes: &[u8]) -> Option<Result<Reply, Error>> {
        let mut buf = incoming(bytes);
        let reply = parse(&mut buf).expect("well formed");
        if reply.is_some() {
            assert!(buf.buf.is_empty(), "the whole reply is consumed");
        }
        reply
    }

    fn text(s: &str) -> Reply {
        Reply::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn replies_parse_like_the_redis_crate_and_wait_for_their_end() {
        let xread =
            b"*1\r\n*2\r\n$3\r\nkey\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$4\r\ntype\r\n$0\r\n\r\n";
        let expected = Reply::Array(vec![Reply::Array(vec![
            text("key"),
            Reply::Array(vec![Reply::Array(vec![
                text("1-1"),
                Reply::Array(vec![text("type"), text("")]),
            ])]),
        ])]);
        assert_eq!(parsed(xread).map(|r| r.ok()), Some(Some(expected.clone())));
        // The redis crate reads the same bytes to the same tree.
        let theirs = redis::parse_redis_value(xread).ok();
        assert_eq!(theirs, Some(redis::Value::from(expected)));
        // Every cut short of the end is incomplete, and consumes nothing.
        for cut in 0..xread.len() {
            let mut buf = incoming(&xread[..cut]);
            assert!(parse(&mut buf).expect("a prefix").is_none(), "cut at {cut}");
            assert_eq!(buf.buf.len(), cut);
        }
        // Arriving a byte at a time, the check goes on where it stopped, and the reply is
        // whole at its last byte.
        let mut buf = Incoming::default();
        for (at, byte) in xread.iter().enumerate() {
            buf.buf.extend_from_slice(&[*byte]);
            let reply = parse(&mut buf).expect("a prefix");
            assert_eq!(reply.is_some(), at == xread.len() - 1, "at {at}");
        }
        assert_eq!(parsed(b"*-1\r\n").map(|r| r.ok()), Some(Some(Reply::Nil)));
        assert_eq!(parsed(b"$-1\r\n").map(|r| r.ok()), Some(Some(Reply::Nil)));
        assert_eq!(
            parsed(b":42\r\n").map(|r| r.ok()),
            Some(Some(Reply::Int(42)))
        );
        assert_eq!(parsed(b"+OK\r\n").map(|r| r.ok()), Some(Some(text("OK"))));
    }

    /// RESP2 bytes of `reply`, as a server writes them.
    fn encode(reply: &Reply, out: &mut Vec<u8>) {
        match reply {
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Text(t) => {
                out.extend_from_slice(format!("${}\r\n", t.len()).as_bytes());
                out.extend_from_slice(t);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    encode(item, out);
                }
            }
        }
    }

    fn any_reply() -> impl proptest::strategy::Strategy<Value = Reply> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Reply::Nil),
            any::<i64>().prop_map(Reply::Int),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| Reply::Text(b.into())),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            proptest::collection::vec(inner, 0..8).prop_map(Reply::Array)
        })
    }

    proptest::proptest! {
        /// Any reply, whole or arriving in two pieces, parses to itself and to what the redis
        /// crate reads from the same bytes.
        #[test]
        fn any_reply_parses_to_itself_and_agrees_with_the_redis_crate(
            reply in any_reply(),
            cut in 0usize..4096,
        ) {
            let mut bytes = Vec::new();
            encode(&reply, &mut bytes);
            let theirs = redis::parse_redis_value(&bytes).ok();
            proptest::prop_assert_eq!(theirs, Some(redis::Value::from(reply.clone())));
            let cut = cut % (bytes.len() + 1);
            let mut buf = incoming(&bytes[..cut]);
            let early = parse(&mut buf).ok().flatten().and_then(Result::ok);
            if cut < bytes.len() {
                proptest::prop_assert!(early.is_none());
                buf.buf.extend_from_slice(&bytes[cut..]);
                let whole = parse(&mut buf).ok().flatten().and_then(Result::ok);
                proptest::prop_assert_eq!(whole, Some(reply));
            } else {
                proptest::prop_assert_eq!(early, Some(reply));
            }
            proptest::prop_assert!(buf.buf.is_empty());
        }
    }

    #[test]
    fn an_error_reply_keeps_its_kind_and_garbage_is_an_error() {
        let Some(Err(Error::Redis(moved))) = parsed(b"-MOVED 3999 127.0.0.1:6381\r\n") else {
            panic!("an error reply")
        };
        assert_eq!(moved.redirect_node(), Some(("127.0.0.1:6381", 3999)));
        let Some(Err(Error::Redis(noauth))) = parsed(b"-NOAUTH Authentication required.\r\n")
        else {
            panic!("an error reply")
        };
        assert_eq!(noauth.code(), Some("NOAUTH"));
        for bad in [&b"?x\r\n"[..], b"$x\r\n", b"*1\n", b"$3\r\nabcde\r\n"] {
            let mut buf = incoming(bad);
            let outcome = parse(&mut buf);
            assert!(
                outcome.is_err() || matches!(outcome, Ok(Some(Err(_)))),
                "{bad:?} gave {outcome:?}"
            );
        }
    }
}
