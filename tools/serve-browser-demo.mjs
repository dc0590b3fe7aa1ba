// Serves the browser demo (examples/browser/index.html), the bundle (dist/browser/) and the shipped
// model (models/) on http://127.0.0.1:PORT, cross-origin isolated so the CPU kernels can use shared
// WebAssembly memory. Usage: npm run demo:browser [-- --port 8081]
import { createServer } from 'node:http';
import { createReadStream, statSync } from 'node:fs';
import { extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = fileURLToPath(new URL('..', import.meta.url));
const allowed = ['examples', 'dist/browser', 'models'].map((d) => join(root, d) + sep);
const types = { '.html': 'text/html', '.js': 'text/javascript', '.map': 'application/json', '.json': 'application/json' };
let values;
try { ({ values } = parseArgs({ options: { port: { type: 'string', default: '8081' } } })); } catch (e) {
  console.error(`${e.message} (usage: npm run demo:browser [-- --port 8081])`);
  process.exit(2);
}
const port = Number(values.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`--port: expected a port number (0-65535), got "${values.port}"`);
  process.exit(2);
}

createServer((req, res) => {
  res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
  res.setHeader('Cross-Origin-Embedder-Policy', 'require-corp');
  const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  if (path === '/') { res.writeHead(302, { location: '/examples/browser/' }); res.end(); return; }
  let file = normalize(join(root, path));
  if (path.endsWith('/')) file = join(file, 'index.html');
  let size = -1;
  try { size = statSync(file).isFile() ? statSync(file).size : -1; } catch { /* missing */ }
  if (!allowed.some((d) => file.startsWith(d)) || size < 0) { res.writeHead(404); res.end('not found'); return; }
  res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream', 'content-length': size });
  createReadStream(file).pipe(res);
}).on('error', (e) => {
  console.error(e.code === 'EADDRINUSE' ? `port ${port} is in use: pick another with --port N` : `cannot serve the demo: ${e.message}`);
  process.exit(1);
}).listen(port, '127.0.0.1', function () {
  console.log(`quest browser demo: http://127.0.0.1:${this.address().port}/ (Ctrl-C to stop)`);
});
