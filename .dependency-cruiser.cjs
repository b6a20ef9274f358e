// Import rules checked by `npm run lint` (dependency-cruiser): no module imports itself in a
// circle, and the folders depend one way only: shared ← proxy ← allocator, shared ← cli, and
// nothing but tests and benchmarks imports tests or benchmarks.
module.exports = {
  forbidden: [
    { name: 'no-circular', severity: 'error', comment: 'modules that import each other in a circle', from: {}, to: { circular: true } },
    { name: 'shared-imports-no-daemon', severity: 'error', comment: 'shared/ is what the daemons build on', from: { path: '^shared/' }, to: { path: '^(proxy|allocator|cli|bench|test)/' } },
    { name: 'proxy-imports-no-allocator', severity: 'error', comment: 'the allocator runs proxies, not the other way round', from: { path: '^proxy/' }, to: { path: '^(allocator|cli|bench|test)/' } },
    { name: 'allocator-imports-no-cli', severity: 'error', from: { path: '^allocator/' }, to: { path: '^(cli|bench|test)/' } },
    { name: 'cli-imports-no-daemon-internals', severity: 'error', comment: 'the CLI starts daemons as processes', from: { path: '^cli/' }, to: { path: '^(proxy|allocator|bench|test)/' } }
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' }
  }
}
