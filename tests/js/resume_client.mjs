// A real WHATWG EventSource (npm `eventsource` v4) for the resume tests.
//
// usage: node resume_client.mjs URL SECONDS
//
// Prints one JSON line per event received ({"type","data","id"}) and one per
// connection state change ({"type":"open"} / {"type":"error","readyState"}), and exits 0
// after the event whose data is "end", or 1 after SECONDS.
import { EventSource } from 'eventsource';

const [url, seconds] = process.argv.slice(2);
const limit = Number(seconds || 60) * 1000;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const es = new EventSource(url);
const timer = setTimeout(() => {
  out({ type: 'timeout' });
  es.close();
  process.exit(1);
}, limit);

es.onopen = () => out({ type: 'open' });
// readyState 2 (CLOSED) after an error means the client gave up for good.
es.onerror = () => out({ type: 'error', readyState: es.readyState });
for (const type of ['message', 'connected', 'sse-cluster.reset', 'sse-cluster.gap', 'sse-cluster.refused']) {
  es.addEventListener(type, (event) => {
    out({ type, data: event.data, id: event.lastEventId });
    if (type === 'message' && event.data === 'end') {
      clearTimeout(timer);
      es.close();
      process.exit(0);
    }
  });
}
