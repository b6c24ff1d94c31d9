// Drives the official AssemblyAI JavaScript SDK (Node) through one live session, one command
// at a time: the Python test writes one JSON command per stdin line and reads one JSON event
// per stdout line. Audio (100 ms of silence every 100 ms) flows from connect to close.
//   argv[2]: {apiKey, websocketBaseUrl, speechModel}
//   stdin:   {"op": "update", "config": {...snake_case...}} | {"op": "close"}
//   stdout:  {"event": "begin", "id"} | {"event": "updated"} | {"event": "turn", ...}
//            | {"event": "warning", "code", "warning"} | {"event": "error", "code", "message"}
//            | {"event": "close", "code", "reason"} | {"event": "done"} | {"event": "failed", "error"}
import readline from "node:readline";
import { AssemblyAI } from "assemblyai";

const cfg = JSON.parse(process.argv[2]);
const emit = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
let audio;
try {
  const client = new AssemblyAI({ apiKey: cfg.apiKey });
  const rt = client.streaming.transcriber({
    websocketBaseUrl: cfg.websocketBaseUrl,
    sampleRate: 16000,
    speechModel: cfg.speechModel,
  });
  rt.on("turn", (turn) => emit({ event: "turn", end_of_turn: turn.end_of_turn }));
  rt.on("warning", (w) => emit({ event: "warning", code: w.warning_code, warning: w.warning }));
  rt.on("error", (e) => emit({ event: "error", code: e.code ?? null, message: String(e.message ?? e) }));
  rt.on("close", (code, reason) => emit({ event: "close", code, reason: String(reason ?? "") }));
  const begin = await rt.connect();
  emit({ event: "begin", id: begin.id });
  const silence = Buffer.alloc(3200);
  audio = setInterval(() => {
    try {
      rt.sendAudio(silence);
    } catch {
      clearInterval(audio);
    }
  }, 100);
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const command = JSON.parse(line);
    if (command.op === "update") {
      rt.updateConfiguration(command.config);
      emit({ event: "updated" });
    } else if (command.op === "close") {
      clearInterval(audio);
      await rt.close(true);
      emit({ event: "done" });
      break;
    }
  }
} catch (error) {
  emit({ event: "failed", error: String(error && error.stack ? error.stack : error) });
}
clearInterval(audio);
process.exit(0);
