"""The official `openai` Python package against a real `loom serve` (Chat Completions).

Run: LOOM_BIN=target/debug/loom python -m unittest discover -s clients/python -v
Every wait is bounded; the server and a fake OpenAI-compatible upstream for `chat-agent` are
started by the test.
"""

import json
import os
import subprocess
import threading
import time
import unittest
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
LOOM = os.environ.get("LOOM_BIN", str(ROOT / "target" / "debug" / "loom"))
LIMIT = 30


def upstream_events():
    """What the fake upstream streams: two tokens, the finish, the usage, [DONE]."""
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "fake"}
    tokens = [
        {**base, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]}
        for t in ("Hello", " world")
    ]
    finish = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    return [json.dumps(e) for e in tokens + [finish, usage]] + ["[DONE]"]


class Upstream(BaseHTTPRequestHandler):
    """A fake OpenAI-compatible server for chat-agent: streams `upstream_events()`."""

    requests = []

    def do_POST(self):  # noqa: N802 (the stdlib's name)
        length = int(self.headers.get("content-length", 0))
        request = json.loads(self.rfile.read(length))
        Upstream.requests.append(request)
        if request["messages"][-1]["content"] == "refuse":
            body = json.dumps({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for event in upstream_events():
            self.wfile.write(f"data: {event}\n\n".encode())
            self.wfile.flush()

    def log_message(self, *args):
        pass


class LoomServer:
    """`loom serve` on a free port, with the example workflows, stopped with SIGTERM."""

    def __init__(self, env=None):
        self.upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        threading.Thread(target=self.upstream.serve_forever, daemon=True).start()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LOOM_"))}
        full_env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{self.upstream.server_port}/v1"
        full_env.update(env or {})
        self.process = subprocess.Popen(
            [LOOM, "serve", "--addr", "127.0.0.1:0", "--workflows", str(ROOT / "examples" / "workflows")],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + LIMIT
        while True:
            line = self.process.stderr.readline()
            if line.startswith("loom: serving on http://"):
                self.base = "http://" + line.split("http://", 1)[1].split()[0]
                break
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"loom serve did not start: {line!r}")

    def client(self, api_key="unused"):
        return OpenAI(base_url=self.base + "/v1", api_key=api_key, timeout=LIMIT, max_retries=0)

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=LIMIT) as response:
            return json.loads(response.read())

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=LIMIT)
        self.upstream.shutdown()


class WithServer(unittest.TestCase):
    """A test class with its own `loom serve` and an `openai` client for it."""

    @classmethod
    def setUpClass(cls):
        cls.loom = LoomServer()
        cls.client = cls.loom.client()

    @classmethod
    def tearDownClass(cls):
        cls.loom.stop()


class ChatCompletions(WithServer):

    def test_models_list_actors_and_workflows(self):
        ids = [m.id for m in self.client.models.list()]
        self.assertIn("chat-agent", ids)
        self.assertIn("team-demo", ids)
        self.assertIn("workflows/batch-report", ids)
        # `models.retrieve`, a workflow's id (with its slash) too; an unknown one is a 404.
        self.assertEqual(self.client.models.retrieve("chat-agent").id, "chat-agent")
        self.assertEqual(
            self.client.models.retrieve("workflows/batch-report").id, "workflows/batch-report"
        )
        with self.assertRaises(openai.NotFoundError):
            self.client.models.retrieve("nobody")

    def test_a_chat_agent_reply_streams_tokens_then_usage(self):
        stream = self.client.chat.completions.create(
            model="chat-agent",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            temperature=0.5,
            stop=["\n\n"],
            response_format={"type": "json_object"},
            seed=7,
            store=False,
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, "Hello world")
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, ["stop"])
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.total_tokens, 5)
        # The whole conversation reached the upstream once, with the sampling field.
        sent = Upstream.requests[-1]
        self.assertEqual([m["role"] for m in sent["messages"]], ["system", "user"])
        self.assertEqual(sent["temperature"], 0.5)
        # The server's own sampling and output fields go on to it; one Loom has no use for
        # (`store`) does not.
        self.assertEqual(sent["stop"], ["\n\n"])
        self.assertEqual(sent["response_format"], {"type": "json_object"})
        self.assertEqual(sent["seed"], 7)
        self.assertNotIn("store", sent)

    def test_a_non_streaming_completion_is_the_whole_reply(self):
        completion = self.client.chat.completions.create(
            model="chat-agent", messages=[{"role": "user", "content": "hi"}]
        )
        self.assertEqual(completion.object, "chat.completion")
        # `stream=None`, which the client sends as null, is no stream (OpenAI's schema).
        also = self.client.chat.completions.create(
            model="chat-agent", messages=[{"role": "user", "content": "hi"}], stream=None
        )
        self.assertEqual(also.choices[0].message.content, "Hello world")
        self.assertEqual(completion.choices[0].message.content, "Hello world")
        self.assertEqual(completion.choices[0].finish_reason, "stop")
        self.assertEqual(completion.usage.prompt_tokens, 3)

    def test_a_team_streams_each_members_words_marked_with_its_name(self):
        stream = self.client.chat.completions.create(
            model="team-demo", messages=[{"role": "user", "content": "Loom"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        # Members speak at once: each turn is "[name] words", turns apart by a blank line.
        said = {}
        for turn in text.split("\n\n"):
            self.assertTrue(turn.startswith("["), turn)
            name, words = turn[1:].split("] ", 1)
            said[name] = said.get(name, "") + words
        self.assertEqual(set(said), {"researcher", "analyst", "writer"})
        self.assertEqual(
            said["writer"],
            "Draft: Loom let users watch work happen, stop it at will, and trust what they see.",
        )

    def test_a_workflow_answers_with_its_result(self):
        completion = self.client.chat.completions.create(
            model="workflows/batch-report",
            messages=[{"role": "user", "content": '{"count": 200}'}],
        )
        result = json.loads(completion.choices[0].message.content)
        self.assertEqual(result["steps"]["process"]["processed"], 200)

    def test_a_one_megabyte_prompt_reaches_the_model_whole(self):
        prompt = "x" * 1_000_000
        completion = self.client.chat.completions.create(
            model="chat-agent", messages=[{"role": "user", "content": prompt}]
        )
        self.assertEqual(completion.choices[0].message.content, "Hello world")
        self.assertEqual(Upstream.requests[-1]["messages"][-1]["content"], prompt)

    def test_errors_are_openai_errors(self):
        with self.assertRaises(openai.NotFoundError) as caught:
            self.client.chat.completions.create(model="nobody", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(caught.exception.code, "not_found")
        with self.assertRaises(openai.UnprocessableEntityError):
            self.client.chat.completions.create(
                model="workflows/batch-report",
                messages=[{"role": "user", "content": '{"count": "many"}'}],
            )
        # A misspelt field is refused as OpenAI refuses it, not run without its limit; one of
        # OpenAI's that Loom has no use for is not.
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "x"}], extra_body={"max_token": 5}
            )
        self.assertIn("max_token", caught.exception.message)
        self.client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}], store=False)

    def test_an_upstream_refusal_before_any_token_is_a_status_error_also_when_streaming(self):
        for stream in (False, True):
            with self.assertRaises(openai.InternalServerError) as caught:
                self.client.chat.completions.create(
                    model="chat-agent", messages=[{"role": "user", "content": "refuse"}], stream=stream
                )
            self.assertEqual(caught.exception.status_code, 502)
            self.assertEqual(caught.exception.code, "upstream")
            self.assertIn("401", caught.exception.message)

    def test_a_client_that_goes_away_cancels_the_run(self):
        stream = self.client.chat.completions.create(
            model="team-demo", messages=[{"role": "user", "content": "Loom"}], stream=True
        )
        first = next(iter(stream))
        run_id = first.id.removeprefix("chatcmpl-")
        stream.close()
        deadline = time.monotonic() + LIMIT
        while self.loom.get(f"/v1/runs/{run_id}")["status"] == "running":
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        self.assertEqual(self.loom.get(f"/v1/runs/{run_id}")["status"], "cancelled")


class Responses(WithServer):

    def test_a_response_streams_its_events_numbered_in_order(self):
        events = list(self.client.responses.create(model="chat-agent", input="hi", stream=True))
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        kinds = [e.type for e in events]
        self.assertEqual(kinds[:4], [
            "response.created", "response.in_progress",
            "response.output_item.added", "response.content_part.added",
        ])
        self.assertEqual(kinds[-1], "response.completed")
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        self.assertEqual(deltas, ["Hello", " world"])
        done = events[-1].response
        self.assertEqual(done.output_text, "Hello world")
        self.assertEqual(done.usage.input_tokens, 3)
        self.assertEqual(done.usage.output_tokens, 2)

    def test_an_upstream_refusal_before_any_output_is_a_status_error(self):
        for stream in (False, True):
            with self.assertRaises(openai.InternalServerError) as caught:
                self.client.responses.create(model="chat-agent", input="refuse", stream=stream)
            self.assertEqual(caught.exception.status_code, 502)
            self.assertIn("401", caught.exception.message)

    def test_a_response_without_stream_is_the_finished_response(self):
        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        response = self.client.responses.create(
            model="chat-agent",
            instructions="be brief",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
            max_output_tokens=50,
            top_p=0.9,
            text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
            reasoning={"effort": "low"},
            store=False,
            truncation="auto",
        )
        self.assertEqual(response.status, "completed")
        self.assertEqual(response.output_text, "Hello world")
        sent = Upstream.requests[-1]
        self.assertEqual(sent["messages"], [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        ])
        self.assertEqual(sent["max_tokens"], 50)
        # The output and sampling fields go on in Chat Completions' names; OpenAI's own that
        # Loom has no use for (`store`, `truncation`) do not.
        self.assertEqual(sent["top_p"], 0.9)
        self.assertEqual(sent["response_format"], {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        })
        self.assertEqual(sent["reasoning_effort"], "low")
        self.assertNotIn("store", sent)
        self.assertNotIn("truncation", sent)
        # `stream=None` and `background=None`, sent as nulls, are neither (OpenAI's schema).
        also = self.client.responses.create(
            model="chat-agent", input="hi", stream=None, background=None
        )
        self.assertEqual(also.output_text, "Hello world")

    def test_what_loom_cannot_honour_is_refused_not_dropped(self):
        asked = len(Upstream.requests)
        # A misspelt field would run without its limit; an image the model would never see; a
        # conversation Loom does not keep.
        for extra, says in [
            ({"extra_body": {"max_output_token": 5}}, "max_output_token"),
            ({"conversation": "conv_1"}, "conversation"),
        ]:
            with self.assertRaises(openai.BadRequestError) as caught:
                self.client.responses.create(model="chat-agent", input="hi", **extra)
            self.assertIn(says, caught.exception.message)
        picture = [{"role": "user", "content": [
            {"type": "input_text", "text": "what is in this picture?"},
            {"type": "input_image", "image_url": "https://example.com/cat.png"},
        ]}]
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.responses.create(model="chat-agent", input=picture)
        self.assertIn("input_image", caught.exception.message)
        self.assertEqual(len(Upstream.requests), asked, "nothing reached the model")

    def test_a_team_gives_one_output_item_per_member(self):
        response = self.client.responses.create(model="team-demo", input="Loom")
        names = [item.to_dict().get("name") for item in response.output]
        self.assertEqual(sorted(names), ["analyst", "researcher", "writer"])
        writer = next(i for i in response.output if i.to_dict().get("name") == "writer")
        self.assertEqual(
            writer.content[0].text,
            "Draft: Loom let users watch work happen, stop it at will, and trust what they see.",
        )

    def test_a_workflow_answers_with_its_steps_result(self):
        response = self.client.responses.create(model="workflows/batch-report", input='{"count": 200}')
        self.assertEqual(response.status, "completed")
        result = json.loads(response.output_text)
        self.assertEqual(result["steps"]["process"]["processed"], 200)

    def test_a_background_stream_dropped_mid_way_resumes_with_starting_after(self):
        stream = self.client.responses.create(
            model="team-demo", input="Loom", background=True, stream=True
        )
        seen = []
        for event in stream:
            seen.append(event)
            if len(seen) == 12:
                break
        stream.close()  # the connection drops; a background response goes on
        response_id = seen[0].response.id
        rest = list(self.client.responses.retrieve(
            response_id, stream=True, starting_after=seen[-1].sequence_number
        ))
        numbers = [e.sequence_number for e in seen + rest]
        self.assertEqual(numbers, list(range(len(numbers))), "nothing lost, nothing twice")
        self.assertEqual(rest[-1].type, "response.completed")
        text = "".join(e.delta for e in seen + rest if e.type == "response.output_text.delta")
        self.assertEqual(len(text), len(rest[-1].response.output_text))
        self.assertEqual(self.client.responses.retrieve(response_id).status, "completed")

    def test_a_background_response_is_cancelled_once_and_for_all(self):
        response = self.client.responses.create(model="team-demo", input="Loom", background=True)
        self.assertIn(response.status, ("queued", "in_progress"))
        cancelled = self.client.responses.cancel(response.id)
        self.assertEqual(cancelled.status, "cancelled")
        self.assertEqual(self.client.responses.cancel(response.id).status, "cancelled")
        self.assertEqual(self.client.responses.retrieve(response.id).status, "cancelled")
        with self.assertRaises(openai.NotFoundError):
            self.client.responses.retrieve("resp_nope")


class WithApiKey(unittest.TestCase):
    def test_the_key_is_the_clients_api_key(self):
        loom = LoomServer({"LOOM_API_KEY": "s3cret"})
        try:
            with self.assertRaises(openai.AuthenticationError) as caught:
                loom.client("wrong").models.list()
            self.assertEqual(caught.exception.code, "unauthorized")
            ids = [m.id for m in loom.client("s3cret").models.list()]
            self.assertIn("chat-agent", ids)
        finally:
            loom.stop()


if __name__ == "__main__":
    unittest.main()
