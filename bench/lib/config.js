'use strict'
// Options of a bench run (from process.argv) and the dlhost build under test.
const path = require('path')

const root = path.join(__dirname, '..', '..')
// DLHOST_BENCH_ROOT: benchmark another build tree (e.g. a patched copy) with
// this same harness; the example plugins still come from this checkout.
const pkg = process.env.DLHOST_BENCH_ROOT ? path.resolve(process.env.DLHOST_BENCH_ROOT) : root
function requireRetry (id) {
  // Someone may be rebuilding build/Release under us: retry for a while.
  for (let i = 0; ; i++) {
    try { return require(id) } catch (err) {
      if (i >= 60 || (err.code !== 'MODULE_NOT_FOUND' && !/No native build|cannot open shared object/.test(err.message))) throw err
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000)
    }
  }
}
const dlhost = requireRetry(path.join(pkg, 'dist'))
const { CopyStore } = require(path.join(pkg, 'dist', 'reload', 'copies'))
const elf = { ...require(path.join(pkg, 'dist', 'elf')), ...require(path.join(pkg, 'dist', 'rules')) }
const { binding } = require(path.join(pkg, 'dist', 'binding'))

const argv = process.argv.slice(2)
const flag = (name) => argv.includes(`--${name}`)
const opt = (name, dflt) => {
  const a = argv.find(x => x.startsWith(`--${name}=`))
  return a === undefined ? dflt : a.slice(name.length + 3)
}
if (flag('help') || flag('h')) {
  process.stdout.write('usage: node bench/run.js [--json] [--quick] [--only=seq,pipe,sync,eff,spin,spin1,reload,storm,memory,isolate,loader,twoway,rollout,batch] [--rounds=N]\n')
  process.exit(0)
}
const JSON_OUT = flag('json')
const QUICK = flag('quick')
const ROUNDS = Number(opt('rounds', QUICK ? 3 : 5))
// --quick leaves out spin1 (the one-CPU spin study), so that it stays under a minute.
const ONLY = new Set(String(opt('only', QUICK ? 'seq,pipe,sync,eff,spin,reload,storm,memory,isolate,loader,twoway,rollout,batch' : 'seq,pipe,sync,eff,spin,spin1,reload,storm,memory,isolate,loader,twoway,rollout,batch')).split(','))
const NO_IDLE = flag('no-idle')
const ROUND_MS = QUICK ? 150 : 300 // one round of one subject
const SWAPS = QUICK ? 10 : 20 // reloads per strategy
const WATCH_SETTLE_MS = 20 // settle period of the watched reload cases
const STORM_MS = QUICK ? 500 : 700 // one steady / storm window
const STORM_PAIRS = QUICK ? 3 : 6
const IDLE_MS = 1000 // idle period whose CPU is measured

const OUT = path.join(root, 'examples', 'out')
const LIBS = {
  host: path.join(OUT, 'libecho_host.so'),
  native: path.join(OUT, 'libecho_native.so'),
  cxx: path.join(OUT, 'libecho_cxx.so'),
  rust: path.join(OUT, 'libecho_rust.so'),
  'lua-resty-ffi': path.join(OUT, 'libffi_echo.so')
}

const REQ = Buffer.alloc(64, 0x61) // the 64-byte echo request

module.exports = {
  root,
  pkg,
  dlhost,
  CopyStore,
  elf,
  binding,
  argv,
  JSON_OUT,
  QUICK,
  ROUNDS,
  ONLY,
  NO_IDLE,
  ROUND_MS,
  SWAPS,
  WATCH_SETTLE_MS,
  STORM_MS,
  STORM_PAIRS,
  IDLE_MS,
  LIBS,
  REQ
}
