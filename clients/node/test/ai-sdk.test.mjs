// The official AI SDK client side, `ai`'s DefaultChatTransport (what `useChat` uses) and
// readUIMessageStream, against a real `loom serve`.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  AbstractChat,
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithToolCalls,
  readUIMessageStream,
} from "ai";
import { startLoom } from "../support.mjs";

let loom;
before(async () => {
  loom = await startLoom();
});
after(async () => {
  await loom.stop();
});

const transport = (agent) => new DefaultChatTransport({ api: `${loom.base}/v1/ai-sdk/${agent}` });
const userMessage = (text) => ({ id: "u1", role: "user", parts: [{ type: "text", text }] });

/** Sends one user message to `agent` in chat `chatId`; resolves to the final UI message. */
async function chat(agent, text, chatId = `chat-${Math.random().toString(36).slice(2)}`) {
  const stream = await transport(agent).sendMessages({
    chatId,
    messages: [userMessage(text)],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
  });
  return last(readUIMessageStream({ stream }));
}

async function last(messages) {
  let message;
  for await (const snapshot of messages) message = snapshot;
  return message;
}

test("a chat-agent reply is one text part; the result and usage are the message's metadata", async () => {
  const message = await chat("chat-agent", "hi");
  assert.equal(message.role, "assistant");
  const texts = message.parts.filter((p) => p.type === "text");
  assert.deepEqual(texts.map((p) => [p.text, p.state]), [["Hello world", "done"]]);
  assert.equal(message.metadata.usage.total_tokens, 5);
  assert.equal(message.metadata.result.text, "Hello world");
});

test("a team's members each get a text part naming them", async () => {
  const message = await chat("team-demo", "Loom");
  const texts = message.parts.filter((p) => p.type === "text");
  const bySpeaker = Object.fromEntries(
    texts.map((p) => [p.providerMetadata.loom.speaker, p.text]),
  );
  assert.deepEqual(Object.keys(bySpeaker).sort(), ["analyst", "researcher", "writer"]);
  assert.equal(
    bySpeaker.writer,
    "Draft: Loom let users watch work happen, stop it at will, and trust what they see.",
  );
});

test("a workflow's steps and progress are data parts replaced in place by id", async () => {
  const message = await chat("workflows/batch-report", '{"count": 300}');
  const steps = message.parts.filter((p) => p.type === "data-loom-step");
  assert.deepEqual(steps.map((p) => [p.id, p.data.status]), [["process", "done"], ["report", "done"]]);
  const progress = message.parts.filter((p) => p.type === "data-loom-progress");
  assert.equal(progress.length, 1, "one progress part per step, updated in place");
  assert.equal(message.metadata.result.steps.process.processed, 300);
});

test("a dropped chat resumes as a full replay, and answers 204 once the run has ended", async () => {
  const chatId = "resume-chat-1";
  const abort = new AbortController();
  const stream = await transport("team-demo").sendMessages({
    chatId,
    messages: [userMessage("Loom")],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: abort.signal,
  });
  const reader = stream.getReader();
  for (let i = 0; i < 6; i++) await reader.read();
  abort.abort(); // the connection drops mid-stream
  await reader.cancel().catch(() => {});
  const resumed = await transport("team-demo").reconnectToStream({ chatId });
  assert.ok(resumed, "the chat's run is still going");
  const message = await last(readUIMessageStream({ stream: resumed }));
  const texts = message.parts.filter((p) => p.type === "text");
  assert.equal(texts.length, 3);
  assert.ok(texts.every((p) => p.state === "done"));
  assert.equal(await transport("team-demo").reconnectToStream({ chatId }), null);
});

test("a failing run ends with an error part; an unknown agent is an HTTP error", async () => {
  const stream = await transport("batch").sendMessages({
    chatId: "failing",
    messages: [userMessage('{"count": "many"}')],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const error = chunks.find((c) => c.type === "error");
  assert.match(error.errorText, /^bad_input: /);
  await assert.rejects(chat("nobody", "x"), /not_found/);
  // A check the server makes before starting is an HTTP error too (422).
  await assert.rejects(chat("workflows/batch-report", '{"count": "many"}'), /bad_input/);
});

/** A chat's state kept in plain fields, as `useChat` keeps it in React's. */
class ChatState {
  status = "ready";
  error = undefined;
  messages = [];
  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = this.messages.map((m, i) => (i === index ? message : m));
  };
  snapshot = (value) => structuredClone(value);
}

test("a client-side tool loop goes on in one assistant message and stops at the answer", async () => {
  let sends = 0;
  const chat = new (class extends AbstractChat {})({
    id: `tools-${Math.random().toString(36).slice(2)}`,
    state: new ChatState(),
    transport: new DefaultChatTransport({
      api: `${loom.base}/v1/ai-sdk/chat-agent`,
      prepareSendMessagesRequest: ({ id, messages }) => {
        sends += 1;
        return { body: { id, messages } };
      },
    }),
    onToolCall: ({ toolCall }) => {
      chat.addToolOutput({ tool: toolCall.toolName, toolCallId: toolCall.toolCallId, output: { temp: 21 } });
    },
    // Bounded, so a loop that would not stop fails the test instead of running on.
    sendAutomaticallyWhen: (options) => sends < 5 && lastAssistantMessageIsCompleteWithToolCalls(options),
  });
  await chat.sendMessage({ text: "What is the weather in Paris?" });
  const deadline = Date.now() + 20_000;
  while ((chat.status !== "ready" || sends < 2) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await new Promise((resolve) => setTimeout(resolve, 300)); // no further request follows
  assert.equal(sends, 2, "the call, then the answer to its result");
  const assistants = chat.messages.filter((m) => m.role === "assistant");
  assert.equal(assistants.length, 1, JSON.stringify(chat.messages));
  const kinds = assistants[0].parts.map((p) => (p.type === "text" ? `text:${p.text}` : p.type === "dynamic-tool" ? `tool:${p.state}` : p.type));
  assert.deepEqual(kinds, ["step-start", "tool:output-available", "step-start", "text:Hello world"]);
});
