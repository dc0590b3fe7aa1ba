// Bundles the library for browsers: dist/browser.js (tsc's output of src/browser.ts) and everything it
// imports -> dist/browser/quest.js, one ES module. The few Node built-ins the engine imports (disk files,
// worker threads) are replaced by stubs that say so if a browser ever reaches them; the `webgpu` package
// (Dawn, for Node) stays an import the browser never makes (navigator.gpu comes first). Run by `npm run build`.
import { build } from 'esbuild';

// what a stub returns instead of throwing: one thread (no worker pool in a browser)
const overrides = { 'node:os': { availableParallelism: '() => 1', tmpdir: "() => '/tmp'" } };

const nodeStubs = {
  name: 'node-stubs',
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (a) => ({ path: a.path, namespace: 'node-stub' }));
    b.onLoad({ filter: /.*/, namespace: 'node-stub' }, async (a) => {
      const names = Object.keys(await import(a.path)).filter((n) => /^[A-Za-z_$][\w$]*$/.test(n) && n !== 'default');
      const own = overrides[a.path] ?? {};
      const lines = names.map((n) => `export const ${n} = ${own[n] ?? `() => { throw new Error('${a.path} ${n}: not available in a browser'); }`};`);
      return { contents: lines.join('\n'), loader: 'js' };
    });
  },
};

const result = await build({
  entryPoints: [new URL('../dist/browser.js', import.meta.url).pathname],
  outfile: new URL('../dist/browser/quest.js', import.meta.url).pathname,
  bundle: true, format: 'esm', platform: 'browser', target: 'es2022', sourcemap: true,
  external: ['webgpu'], plugins: [nodeStubs], logLevel: 'warning', metafile: true,
});
const bytes = Object.values(result.metafile.outputs).find((o) => o.entryPoint)?.bytes ?? 0;
console.log(`browser bundle -> dist/browser/quest.js (${(bytes / 1024).toFixed(0)} KiB)`);
