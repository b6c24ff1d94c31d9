// Drives the official AssemblyAI JavaScript SDK (Node) as an application would; the Python
// test passes one JSON argument and reads one JSON line back.
//   {apiKey, websocketBaseUrl, streamingBaseUrl?, useToken?, audioB64, speechModel}
// Prints {begin, turns, token_used, error?}.
import { AssemblyAI } from "assemblyai";

const cfg = JSON.parse(process.argv[2]);
const out = { turns: [], token_used: false };
try {
  const client = new AssemblyAI({ apiKey: cfg.apiKey, streamingBaseUrl: cfg.streamingBaseUrl });
  const params = {
    websocketBaseUrl: cfg.websocketBaseUrl,
    sampleRate: 16000,
    speechModel: cfg.speechModel,
  };
  if (cfg.useToken) {
    params.token = await client.streaming.createTemporaryToken({ expires_in_seconds: 60 });
    out.token_used = true;
  }
  const rt = client.streaming.transcriber(params);
  let finals = 0;
  let onFinal = () => {};
  rt.on("turn", (turn) => {
    out.turns.push({ transcript: turn.transcript, end_of_turn: turn.end_of_turn });
    if (turn.end_of_turn) {
      finals += 1;
      onFinal();
    }
  });
  rt.on("error", (error) => {
    out.error = String(error);
  });
  out.begin = await rt.connect();
  const audio = Buffer.from(cfg.audioB64, "base64");
  for (let i = 0; i < audio.length; i += 3200) {
    rt.sendAudio(audio.subarray(i, i + 3200));
  }
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no final turn in 10 s")), 10000);
    onFinal = () => {
      clearTimeout(timer);
      resolve();
    };
    if (finals > 0) onFinal();
  });
  await rt.close(true);
} catch (error) {
  out.error = String(error && error.stack ? error.stack : error);
}
console.log(JSON.stringify(out));
