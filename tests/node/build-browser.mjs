// Bundles browser-entry.mjs into one classic script (global `KeelClients`) at the path given as the
// first argument. The CDN is not reachable from here, so the page gets the SDKs from this bundle.
import { build } from 'esbuild'

const outfile = process.argv[2]
if (!outfile) {
  console.error('usage: node build-browser.mjs OUTFILE')
  process.exit(2)
}
await build({
  entryPoints: [new URL('./browser-entry.mjs', import.meta.url).pathname],
  bundle: true,
  format: 'iife',
  globalName: 'KeelClients',
  platform: 'browser',
  target: 'es2020',
  outfile,
  logLevel: 'warning',
})
