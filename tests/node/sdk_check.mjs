// The official openai Node SDK against a running Floodgate: chat, a stream with usage, embeddings,
// responses and an error. Prints one JSON object of results; tests/test_node_sdk.py checks them.
// Usage: FLOODGATE_URL=http://127.0.0.1:PORT/v1 FLOODGATE_KEY=... node sdk_check.mjs
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.FLOODGATE_URL, apiKey: process.env.FLOODGATE_KEY, maxRetries: 0 });
const messages = [{ role: "user", content: "我的快递到哪了?" }];
const out = {};

const chat = await client.chat.completions.create({ model: "gpt-4.1", messages });
out.chat = { content: chat.choices[0].message.content, finish: chat.choices[0].finish_reason, usage: chat.usage };

const stream = await client.chat.completions.create({
  model: "gpt-4.1", messages, stream: true, stream_options: { include_usage: true },
});
let text = "";
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks += 1;
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
out.stream = { text, usage, chunks };

const embeddings = await client.embeddings.create({ model: "text-embedding-3-small", input: ["退货流程", "包邮吗"] });
out.embeddings = { count: embeddings.data.length, dimensions: embeddings.data[0].embedding.length };

const response = await client.responses.create({ model: "gpt-4.1", input: "你好" });
out.responses = { text: response.output_text, status: response.status, usage: response.usage };

try {
  await client.chat.completions.create({ model: "no-such-model", messages });
  out.error = { raised: false };
} catch (error) {
  out.error = {
    raised: true, class: error.constructor.name, status: error.status, code: error.code,
    requestId: error.requestID ?? null,
  };
}

console.log(JSON.stringify(out));
