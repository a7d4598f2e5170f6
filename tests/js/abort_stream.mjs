// Abort an OpenAI stream the way apps do, then keep running (a real app does not exit after an abort).
// usage: node abort_stream.mjs BASE_URL MODEL CHUNKS HOW STAY_MS
//   HOW: "break" = leave the for-await loop (the SDK aborts), "abort" = stream.controller.abort(),
//   "signal" = abort an AbortController passed as the request's signal.
// Prints one JSON line per event ({"event": "aborted", "t": epoch ms, ...}), then stays STAY_MS before exiting.
import OpenAI from "openai";

const [baseURL, model, chunksArg, how, stayArg] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const say = (event, extra = {}) => console.log(JSON.stringify({ event, t: Date.now(), ...extra }));

const controller = new AbortController();
const options = how === "signal" ? { signal: controller.signal } : {};
const stream = await client.completions.create({ model, prompt: "Count from 1 to 1000:", max_tokens: 1000, stream: true }, options);
let seen = 0;
try {
  for await (const chunk of stream) {
    if (chunk.choices?.[0]?.text) seen += 1;
    if (seen >= Number(chunksArg)) {
      if (how === "abort") stream.controller.abort();
      if (how === "signal") controller.abort();
      break;
    }
  }
} catch (err) {
  if (err.name !== "APIUserAbortError" && err.name !== "AbortError") throw err;
}
say("aborted", { seen });
await new Promise((resolve) => setTimeout(resolve, Number(stayArg)));
say("exit");
