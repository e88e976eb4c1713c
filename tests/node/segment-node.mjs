// Sends Segment calls through the official Node SDK (@segment/analytics-node), configured as
// docs/api.md shows, and prints what the SDK reported as one JSON line on stdout.
//
// stdin: {"host": "http://127.0.0.1:PORT", "writeKey": "...", "calls": [{"method": "track", "args": {...}}]}
// stdout: {"errors": [...], "callbackErrors": [...], "statuses": [...]}
import { Analytics } from '@segment/analytics-node'

const readStdin = async () => {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

const spec = await readStdin()
const analytics = new Analytics({
  writeKey: spec.writeKey,
  // The SDK resolves `path` against `host` (new URL(path, host)): Keel's prefix goes in the path.
  host: spec.host,
  path: '/segment/v1/batch',
  maxEventsInBatch: spec.maxEventsInBatch ?? 15,
  flushInterval: 1000,
  maxRetries: 0,
})
const errors = []
const callbackErrors = []
const statuses = []
analytics.on('error', (error) => errors.push(String(error?.reason ?? error?.message ?? error)))
analytics.on('http_response', (response) => statuses.push(response.status))

for (const { method, args } of spec.calls) {
  analytics[method](args, (error) => {
    if (error) callbackErrors.push(`${method}: ${String(error?.reason ?? error?.message ?? error)}`)
  })
}
await analytics.closeAndFlush({ timeout: 30000 })
process.stdout.write(JSON.stringify({ errors, callbackErrors, statuses }) + '\n')
