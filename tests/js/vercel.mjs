// The Vercel AI SDK (`ai` + `@ai-sdk/openai-compatible`) against the server, as an app would use it.
// usage: node vercel.mjs WHAT BASE_URL MODEL [CHUNKS HOW STAY_MS]
//   generate: generateText; stream: streamText; tool: generateText with one tool and a forced call;
//   abort: streamText, left after CHUNKS text chunks; HOW: "signal" = abort the AbortSignal passed to
//   streamText, "break" = only leave the for-await loop (streamText keeps reading the response for its result
//   promises: the generation runs on), "lowmem-break" = leave the loop of experimental_streamTextLowMemory (one
//   consumer: leaving cancels the response); then stays STAY_MS.
// Prints one JSON line per result ({"event": ..., "t": epoch ms, ...}).
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { experimental_streamTextLowMemory, generateText, jsonSchema, streamText, tool } from "ai";

const [what, baseURL, modelId, chunksArg, how, stayArg] = process.argv.slice(2);
const provider = createOpenAICompatible({ name: "inglenook", baseURL, apiKey: "unused", includeUsage: true });
const model = provider(modelId);
const say = (event, extra = {}) => console.log(JSON.stringify({ event, t: Date.now(), ...extra }));
const usage = (u) => ({ input: u?.inputTokens ?? null, output: u?.outputTokens ?? null });
const prompt = "Write one short sentence about the sea.";

const weather = tool({
  description: "Current weather in a city",
  inputSchema: jsonSchema({
    type: "object",
    properties: { city: { type: "string" }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
    required: ["city"],
  }),
});

if (what === "generate") {
  const r = await generateText({ model, prompt, maxOutputTokens: 16, temperature: 0, maxRetries: 0 });
  say("done", { text: r.text, finishReason: r.finishReason, usage: usage(r.usage) });
} else if (what === "stream") {
  const r = streamText({ model, prompt, maxOutputTokens: 16, temperature: 0, maxRetries: 0 });
  let text = "";
  let chunks = 0;
  for await (const piece of r.textStream) {
    text += piece;
    chunks += 1;
  }
  say("done", { text, chunks, finishReason: await r.finishReason, usage: usage(await r.usage) });
} else if (what === "tool") {
  const r = await generateText({
    model,
    prompt: "What is the weather in Paris?",
    tools: { get_weather: weather },
    toolChoice: { type: "tool", toolName: "get_weather" },
    maxOutputTokens: 60,
    temperature: 0,
    maxRetries: 0,
  });
  const calls = r.toolCalls.map((c) => ({ id: c.toolCallId, name: c.toolName, input: c.input }));
  say("done", { calls, finishReason: r.finishReason, text: r.text });
} else if (what === "abort") {
  const controller = new AbortController();
  let seen = 0;
  let error = null;
  const start = how === "lowmem-break" ? experimental_streamTextLowMemory : streamText;
  const r = start({
    model,
    prompt: "Count from 1 to 1000:",
    maxOutputTokens: 1000,
    maxRetries: 0,
    abortSignal: controller.signal,
    onError: ({ error: e }) => {
      error = String(e?.name ?? e);
    },
  });
  try {
    for await (const piece of r.textStream) {
      if (piece) seen += 1;
      if (seen >= Number(chunksArg)) {
        if (how === "signal") controller.abort();
        say("aborted", { seen });
        break;
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") throw err;
  }
  if (seen < Number(chunksArg)) say("ended", { seen, error });
  await new Promise((resolve) => setTimeout(resolve, Number(stayArg)));
  say("exit");
} else {
  console.error(`unknown WHAT ${what}`);
  process.exit(2);
}
