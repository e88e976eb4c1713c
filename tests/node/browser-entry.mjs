// The browser bundle the tests' page loads: the official browser SDKs, unmodified, as a vendor's web
// app bundles them from npm (build-browser.mjs bundles this file with esbuild).
export { AnalyticsBrowser } from '@segment/analytics-next'
export { OpenFeature, ProviderEvents } from '@openfeature/web-sdk'
export { OFREPWebProvider } from '@openfeature/ofrep-web-provider'
