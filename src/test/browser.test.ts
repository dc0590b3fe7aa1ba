// Models from URLs and the library in a browser. In Node: fetchModelFiles over a local HTTP server loads
// the same model as the disk loader (a Hugging Face folder, sharded safetensors, a GGUF file), and bad
// URLs and cut-off downloads give clear errors. In headless Chromium (where installed): the browser
// bundle (dist/browser/quest.js) loads the default model from a URL and runs it on WebGPU (SwiftShader
// here) and on the CPU; its logits and greedy text (dense and Quest) must agree with the Node CPU engine,
// and the second load must take the weights from the browser's Cache Storage; then the same for the
// default model converted to a Q4_K_M GGUF (K-quants in the browser: q4_1 / q8_16 GPU weights, WebAssembly
// converters on the CPU).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { readFileSync, existsSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { spawn, spawnSync } from 'node:child_process';
import { fetchModelFiles, pickedModelFiles, modelUrl } from '../model/fetch-files.js';
import { loadModelFiles } from '../model/load.js';
import { cachePlace } from '../model/model-cache.js';
import { loadModel } from '../engine/llm.js';
import { Session, makeModel } from '../engine/session.js';
import { argmax } from '../engine/sampler.js';
import { parseSafetensors } from '../model/safetensors.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { randomGGUF, tempFile } from './fixtures.js';
import { convertHFToGGUF } from '../model/convert.js';

type Route = (req: IncomingMessage, res: ServerResponse) => boolean;

/** A local HTTP server over routes; cross-origin isolated (so a page may use shared WebAssembly memory). */
async function serve(routes: Route[]): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
    res.setHeader('Cross-Origin-Embedder-Policy', 'require-corp');
    if (!routes.some((r) => r(req, res))) { res.statusCode = 404; res.end('not found'); }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return { server, url: `http://127.0.0.1:${port}` };
}

/** Files of a folder on disk under a URL prefix. */
const folder = (prefix: string, dir: string): Route => (req, res) => {
  const path = new URL(req.url!, 'http://x').pathname;
  if (!path.startsWith(prefix)) return false;
  const file = join(dir, decodeURIComponent(path.slice(prefix.length)));
  if (!existsSync(file)) return false;
  const type = file.endsWith('.js') ? 'text/javascript' : file.endsWith('.html') ? 'text/html' : file.endsWith('.json') ? 'application/json' : 'application/octet-stream';
  res.writeHead(200, { 'content-type': type, 'content-length': String(readFileSync(file).byteLength) });
  res.end(readFileSync(file));
  return true;
};

test('fetchModelFiles / pickedModelFiles: a Hugging Face folder, sharded safetensors and a GGUF file from URLs, and picked files, load as from disk; bad URLs and cut-off downloads are clear errors', async () => {
  // the default model split into two shards with an index, as large Hugging Face models are
  const sharded = mkdtempSync(join(tmpdir(), 'quest-shards-'));
  const st = readFileSync(join(DEFAULT_MODEL, 'model.safetensors'));
  const tensors = [...parseSafetensors(new Uint8Array(st), 'default model')];
  const shard = (part: typeof tensors) => {
    const header: Record<string, unknown> = {}; let off = 0; const datas: Uint8Array[] = [];
    for (const [name, t] of part) {
      const dtype = { f32: 'F32', f16: 'F16', bf16: 'BF16' }[t.dtype as string];
      header[name] = { dtype, shape: t.shape, data_offsets: [off, off + t.data.byteLength] }; off += t.data.byteLength; datas.push(t.data);
    }
    const h = Buffer.from(JSON.stringify(header)), len = Buffer.alloc(8); len.writeBigUInt64LE(BigInt(h.length));
    return Buffer.concat([len, h, ...datas]);
  };
  const half = Math.ceil(tensors.length / 2), map: Record<string, string> = {};
  tensors.forEach(([n], i) => { map[n] = i < half ? 'model-00001-of-00002.safetensors' : 'model-00002-of-00002.safetensors'; });
  writeFileSync(join(sharded, 'model-00001-of-00002.safetensors'), shard(tensors.slice(0, half)));
  writeFileSync(join(sharded, 'model-00002-of-00002.safetensors'), shard(tensors.slice(half)));
  writeFileSync(join(sharded, 'model.safetensors.index.json'), JSON.stringify({ weight_map: map }));
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) writeFileSync(join(sharded, f), readFileSync(join(DEFAULT_MODEL, f)));
  const ggufPath = tempFile('fetched.gguf', randomGGUF({ vocab: 64, dim: 32, hidden: 64, layers: 2, heads: 4, kvHeads: 2, seed: 12, vocabulary: true }));
  // a server that announces more bytes than it sends, then closes
  const cut: Route = (req, res) => {
    if (!req.url!.startsWith('/cut/')) return false;
    if (req.url!.endsWith('config.json')) { res.end(readFileSync(join(DEFAULT_MODEL, 'config.json'))); return true; }
    if (req.url!.endsWith('model.safetensors')) { res.writeHead(200, { 'content-length': '1000000' }); res.write(Buffer.alloc(1000)); setTimeout(() => res.destroy(), 100); return true; }
    return false;
  };
  const { server, url } = await serve([folder('/hf/', DEFAULT_MODEL), folder('/sharded/', sharded), folder('/file/', join(ggufPath, '..')), cut]);
  try {
    const disk = loadModelFiles(DEFAULT_MODEL);
    const ids = [1, 50, 300, 7, 99];
    const logitsOf = (m: typeof disk) => new Session(makeModelOf(m)).forward(ids);
    const want = logitsOf(disk);
    for (const where of ['/hf/', '/hf', '/sharded/']) {
      let last = 0;
      const files = await fetchModelFiles(url + where, { onProgress: (d, t) => { assert.ok(d >= last && d <= t); last = d; } });
      const m = loadModelFiles(files);
      assert.deepEqual(m.config, disk.config, where);
      assert.deepEqual(m.tokenizer?.eosIds, disk.tokenizer?.eosIds);
      assert.deepEqual(Array.from(logitsOf(m)), Array.from(want), `${where}: logits differ from the disk model's`);
      assert.ok(last > st.byteLength * 0.99, `${where}: progress reached ${last} bytes`);
    }
    // files a user picked (File objects, as from <input type="file">)
    const picked = ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'model.safetensors']
      .map((f) => new File([readFileSync(join(DEFAULT_MODEL, f))], f));
    let pickedProgress = 0;
    const p = loadModelFiles(await pickedModelFiles(picked, { onProgress: (d, t) => { pickedProgress = d / t; } }));
    assert.deepEqual(Array.from(logitsOf(p)), Array.from(want), 'picked files: logits differ from the disk model\'s');
    assert.equal(pickedProgress, 1);
    await assert.rejects(pickedModelFiles([]), /no model files picked/);
    const g = loadModelFiles(await fetchModelFiles(`${url}/file/fetched.gguf`)), gd = loadModelFiles(ggufPath);
    assert.deepEqual(g.config, gd.config);
    assert.deepEqual(Array.from(new Session(makeModelOf(g)).forward([3, 4, 5])), Array.from(new Session(makeModelOf(gd)).forward([3, 4, 5])));
    await assert.rejects(fetchModelFiles(`${url}/nothing/`), /no config\.json there/);
    await assert.rejects(fetchModelFiles(`${url}/nothing/model.gguf`), /HTTP 404/);
    await assert.rejects(fetchModelFiles(`${url}/cut/`), /cut\/model\.safetensors: download (ended|failed) at byte 1000 of 1000000/);
    await assert.rejects(fetchModelFiles('http://127.0.0.1:1/model.gguf'), /cannot fetch/);
    // hf: names the repository's folder on the Hub (not fetched here: tests never touch the network)
    assert.equal(modelUrl('hf:HuggingFaceTB/SmolLM2-135M-Instruct'), 'https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/resolve/main/');
    assert.equal(modelUrl('hf:Qwen/Qwen2.5-0.5B@v1.0'), 'https://huggingface.co/Qwen/Qwen2.5-0.5B/resolve/v1.0/');
    assert.throws(() => modelUrl('hf:nonsense'), /expected hf:org\/name/);
  } finally {
    server.close(); rmSync(sharded, { recursive: true, force: true });
  }
});

test('a model from a URL is downloaded once into the disk cache; the next load reads the cache, even with the server gone', async () => {
  const root = mkdtempSync(join(tmpdir(), 'quest-cache-'));
  const before = process.env.QUEST_CACHE_DIR;
  process.env.QUEST_CACHE_DIR = root;
  let requests = 0;
  const count: Route = () => { requests++; return false; };
  const { server, url } = await serve([count, folder('/m/', DEFAULT_MODEL)]);
  try {
    const notes: string[] = [];
    const a = await loadModel(`${url}/m/`, { onNote: (m) => notes.push(m) });
    const place = cachePlace(root, `${url}/m/`);
    assert.match(notes.join('\n'), /cached at /);
    assert.ok(existsSync(join(place, '.complete')) && existsSync(join(place, 'model.safetensors')), `nothing cached at ${place}`);
    const first = requests;
    await new Promise<void>((r) => server.close(() => r()));
    const b = await loadModel(`${url}/m/`);
    assert.equal(requests, first, 'the second load went to the server');
    assert.equal(b.path, place);
    const ids = a.encode('The grass is green.');
    assert.deepEqual(Array.from(new Session(b.model).forward(ids)), Array.from(new Session(a.model).forward(ids)));
    a.dispose(); b.dispose();
    // hf: names get their own place (not fetched: tests never touch the network)
    assert.equal(cachePlace('/c', 'hf:Qwen/Qwen2.5-0.5B@v1.0'), join('/c', 'hf', 'Qwen', 'Qwen2.5-0.5B', 'v1.0'));
  } finally {
    server.close();
    if (before === undefined) delete process.env.QUEST_CACHE_DIR; else process.env.QUEST_CACHE_DIR = before;
    rmSync(root, { recursive: true, force: true });
  }
});

const makeModelOf = (m: ReturnType<typeof loadModelFiles>) => makeModel(m.config, m.weights);

/** A Chromium-family browser to drive headless, or null. */
function findBrowser(): string | null {
  for (const c of [process.env.QUEST_CHROMIUM, 'chromium', 'chromium-browser', 'google-chrome'].filter(Boolean) as string[]) {
    if (spawnSync(c, ['--version'], { encoding: 'utf8' }).status === 0) return c;
  }
  return null;
}
const browser = findBrowser();
const bundle = new URL('../browser/quest.js', import.meta.url).pathname;
const skipBrowser = !browser ? 'no Chromium to run the browser test (apt-get install -y chromium, or set QUEST_CHROMIUM)'
  : !existsSync(bundle) ? `no browser bundle at ${bundle} (npm run build makes it)` : false;

const PROMPT = 'The pass key is 51422. Remember it. 51422 is the pass key. The grass is green. The sky is blue. '.repeat(5) + 'What is the pass key? The pass key is';
const TEXT = 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. '.repeat(2);

// The page: per device, the logits after prefilling TEXT and 2 greedy steps, then greedy completions
// dense and with Quest (question decoded token by token); posts everything back to the test.
const PAGE = /* html */ `<!doctype html><meta charset="utf-8"><script type="module">
const post = (x) => fetch('/result', { method: 'POST', body: JSON.stringify(x) });
try {
  const quest = await import('/dist/quest.js');
  await quest.clearModelCache();
  const { prompt, text } = await (await fetch('/case.json')).json();
  const out = { crossOriginIsolated: self.crossOriginIsolated, devices: {} };
  for (const device of ['webgpu', 'cpu']) {
    let progress = 0; const t0 = performance.now(), ms = [];
    const llm = await quest.loadModel('/model/', { device, onProgress: (d, t) => { progress = d / t; } });
    ms.push(performance.now() - t0);
    const s = llm.session();
    const logits = [Array.from(await s.forward(llm.encode(text)))];
    for (let i = 0; i < 2; i++) { const l = logits[logits.length - 1]; logits.push(Array.from(await s.forward([l.indexOf(Math.max(...l))]))); }
    ms.push(performance.now() - t0);
    const dense = await llm.complete(prompt, { temperature: 0, maxTokens: 6 });
    ms.push(performance.now() - t0);
    const q = await llm.complete(prompt, { temperature: 0, maxTokens: 6, decodeTail: 12, attention: { policy: 'quest', budget: 32 } });
    ms.push(performance.now() - t0);
    out.devices[device] = { device: llm.device, progress, logits, dense: dense.text, quest: q.text, ms: ms.map(Math.round) };
    llm.dispose();
  }
  // a K-quant file (Q4_K_M): prefill logits and greedy text on both devices
  out.kquant = {};
  for (const device of ['webgpu', 'cpu']) {
    const llm = await quest.loadModel('/kq/model.gguf', { device });
    const logits = Array.from(await llm.session().forward(llm.encode(text)));
    const dense = await llm.complete(prompt, { temperature: 0, maxTokens: 6 });
    out.kquant[device] = { device: llm.device, logits, dense: dense.text };
    llm.dispose();
  }
  await post(out);
} catch (e) { await post({ error: String(e && e.stack || e) }); }
</script>`;

test('the browser bundle in headless Chromium: the default model from a URL on WebGPU and on the CPU agrees with the Node CPU engine', { skip: skipBrowser, timeout: 600_000 }, async (t) => {
  let resolve!: (x: any) => void;
  const result = new Promise<any>((r) => { resolve = r; });
  const page: Route = (req, res) => {
    const path = new URL(req.url!, 'http://x').pathname;
    if (path === '/test.html') { res.writeHead(200, { 'content-type': 'text/html' }); res.end(PAGE); return true; }
    if (path === '/case.json') { res.writeHead(200, { 'content-type': 'application/json' }); res.end(JSON.stringify({ prompt: PROMPT, text: TEXT })); return true; }
    if (path === '/result' && req.method === 'POST') {
      const chunks: Buffer[] = [];
      req.on('data', (c) => chunks.push(c)).on('end', () => { res.end('ok'); resolve(JSON.parse(Buffer.concat(chunks).toString())); });
      return true;
    }
    return false;
  };
  let weightRequests = 0, kquantRequests = 0;
  const countWeights: Route = (req) => { if (req.url === '/model/model.safetensors') weightRequests++; if (req.url === '/kq/model.gguf') kquantRequests++; return false; };
  const kq = tempFile('model.gguf', convertHFToGGUF(DEFAULT_MODEL, 'q4_k_m'));
  const { server, url } = await serve([page, countWeights, folder('/dist/', join(bundle, '..')), folder('/model/', DEFAULT_MODEL), folder('/kq/', join(kq, '..'))]);
  const profile = mkdtempSync(join(tmpdir(), 'quest-chromium-'));
  const proc = spawn(browser!, ['--headless', '--no-sandbox', '--disable-gpu-sandbox', '--enable-unsafe-webgpu', '--enable-features=Vulkan',
    '--use-vulkan=swiftshader', '--use-webgpu-adapter=swiftshader', '--no-first-run', `--user-data-dir=${profile}`, `${url}/test.html`], { stdio: 'ignore', detached: true }); // (its own process group: killed whole)
  const gone = new Promise<void>((r) => proc.on('exit', () => r()));
  try {
    const exited = gone.then(() => { throw new Error(`the browser exited (code ${proc.exitCode}) before the page reported`); });
    const got = await Promise.race([result, exited]);
    assert.ok(!got.error, `the page failed: ${got.error}`);
    // the reference: the Node CPU engine on the same model from disk
    const cpu = await loadModel(DEFAULT_MODEL);
    const s = new Session(cpu.model);
    const ref = [s.forward(cpu.encode(TEXT))];
    for (let i = 0; i < 2; i++) ref.push(s.forward([argmax(ref[ref.length - 1])]));
    const dense = (await cpu.complete(PROMPT, { temperature: 0, maxTokens: 6 })).text;
    const quest = (await cpu.complete(PROMPT, { temperature: 0, maxTokens: 6, decodeTail: 12, attention: { policy: 'quest', budget: 32 } })).text;
    cpu.dispose();
    for (const [device, tol] of [['webgpu', 5e-2], ['cpu', 1e-3]] as const) {
      const d = got.devices[device];
      assert.equal(d.device, device);
      assert.equal(d.progress, 1, `${device}: load progress did not reach the end`);
      let maxDiff = 0;
      ref.forEach((r, i) => {
        for (let j = 0; j < r.length; j++) maxDiff = Math.max(maxDiff, Math.abs(r[j] - d.logits[i][j]));
        assert.equal(argmax(Float32Array.from(d.logits[i])), argmax(r), `${device}: top-1 differs at step ${i}`);
      });
      assert.ok(maxDiff < tol, `${device}: max |Δlogit| ${maxDiff} vs the Node CPU engine`);
      assert.equal(d.dense, dense, `${device}: greedy text differs`);
      assert.equal(d.quest, quest, `${device}: Quest greedy text differs`);
      assert.match(d.quest, /51422/);
      t.diagnostic(`${device} in the browser: max |Δlogit| ${maxDiff.toExponential(2)}; quest answer ${JSON.stringify(d.quest)}; ms after load, logits, dense, quest: ${d.ms.join(', ')}`);
    }
    // the Q4_K_M file: the Node CPU engine on the same file is the reference
    const kqNode = await loadModel(kq), kqRef = new Session(kqNode.model).forward(kqNode.encode(TEXT));
    const kqDense = (await kqNode.complete(PROMPT, { temperature: 0, maxTokens: 6 })).text;
    kqNode.dispose();
    // (WebGPU: the last token runs as a decode step, whose K-quant products take x as int8 as llama.cpp's
    // do; in Node that step differs from the f32-x CPU engine by 0.1-0.3 on logits of magnitude ~20, and
    // the int8 product itself is checked against float64 in webgpu-products.test.ts)
    for (const [device, tol] of [['webgpu', 0.5], ['cpu', 1e-3]] as const) {
      const d = got.kquant[device];
      assert.equal(d.device, device);
      let maxDiff = 0;
      for (let j = 0; j < kqRef.length; j++) maxDiff = Math.max(maxDiff, Math.abs(kqRef[j] - d.logits[j]));
      assert.equal(argmax(Float32Array.from(d.logits)), argmax(kqRef), `Q4_K_M ${device}: top-1 differs`);
      assert.ok(maxDiff < tol, `Q4_K_M ${device}: max |Δlogit| ${maxDiff} vs the Node CPU engine`);
      assert.equal(d.dense, kqDense, `Q4_K_M ${device}: greedy text differs`);
      t.diagnostic(`Q4_K_M ${device} in the browser: max |Δlogit| ${maxDiff.toExponential(2)}; greedy ${JSON.stringify(d.dense)}`);
    }
    // the second load (the CPU's) took the weights from the browser's Cache Storage
    assert.equal(weightRequests, 1, `the weights were downloaded ${weightRequests} times`);
    assert.equal(kquantRequests, 1, `the Q4_K_M file was downloaded ${kquantRequests} times`);
    t.diagnostic(`page cross-origin isolated: ${got.crossOriginIsolated}`);
  } finally {
    try { process.kill(-proc.pid!, 'SIGKILL'); } catch { /* already gone */ }
    await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
    server.close(); rmSync(profile, { recursive: true, force: true, maxRetries: 5 });
  }
});

test('the browser demo server (npm run demo:browser) starts without arguments and serves the page and the bundle', async () => {
  const script = new URL('../../tools/serve-browser-demo.mjs', import.meta.url).pathname;
  const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    let said = '';
    const url = await new Promise<string>((resolve, reject) => {
      child.stdout.on('data', (d) => { said += d; const m = /http:\/\/\S+\//.exec(said); if (m) resolve(m[0]); });
      child.stderr.on('data', (d) => { said += d; });
      child.on('exit', (code) => reject(new Error(`the demo server exited with ${code}: ${said}`)));
    });
    assert.equal(url, 'http://127.0.0.1:8081/');
    const page = await fetch(url);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<!doctype html>/i);
    const bundle = await fetch(new URL('dist/browser/quest.js', url));
    assert.equal(bundle.status, 200);
    assert.equal(bundle.headers.get('cross-origin-embedder-policy'), 'require-corp');
    assert.match(await bundle.text(), /loadModel/);
    assert.equal((await fetch(new URL('package.json', url))).status, 404); // only the demo's folders are served
  } finally { child.kill(); }
  const bad = spawnSync(process.execPath, [script, '--port', 'abc'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--port: expected a port number/);
});
