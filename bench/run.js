#!/usr/bin/env node
'use strict'
// dlhost benchmarks: `npm run bench` (builds first) or `node bench/run.js`.
//
//   node bench/run.js [--json] [--quick] [--only=seq,pipe,sync,spin,spin1,reload,storm] [--rounds=N]
//
// Every number is measured in rounds that alternate with a *peer* measured in
// the same process and the same run (a setImmediate round trip, a plain N-API
// call, a napi_async_work round trip, …): on a noisy 2-core VM the absolute
// numbers move by 2x from one minute to the next, the ratios much less.
// Reported: the median over rounds of each round's median / p99, and the
// median over rounds of (subject / peer of the same round).
// See docs/benchmarks.md for what each number means and the measured results.

const { execFileSync } = require('child_process')
const crypto = require('crypto')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { performance } = require('perf_hooks')

const root = path.join(__dirname, '..')
// DLHOST_BENCH_ROOT: benchmark another build tree (e.g. a patched copy) with
// this same harness; the example plugins still come from this checkout.
const pkg = process.env.DLHOST_BENCH_ROOT ? path.resolve(process.env.DLHOST_BENCH_ROOT) : root
function requireRetry (id) {
  // Someone may be rebuilding build/Release under us: retry for a while.
  for (let i = 0; ; i++) {
    try { return require(id) } catch (err) {
      if (i >= 60 || err.code !== 'MODULE_NOT_FOUND' && !/No native build|cannot open shared object/.test(err.message)) throw err
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000)
    }
  }
}
const dlhost = requireRetry(path.join(pkg, 'dist'))
const { CopyStore } = require(path.join(pkg, 'dist', 'reload', 'copies'))
const elf = { ...require(path.join(pkg, 'dist', 'elf')), ...require(path.join(pkg, 'dist', 'rules')) }
const { binding } = require(path.join(pkg, 'dist', 'binding'))

// ------------------------------------------------------------------ options

const argv = process.argv.slice(2)
const flag = (name) => argv.includes(`--${name}`)
const opt = (name, dflt) => {
  const a = argv.find(x => x.startsWith(`--${name}=`))
  return a === undefined ? dflt : a.slice(name.length + 3)
}
if (flag('help') || flag('h')) {
  process.stdout.write('usage: node bench/run.js [--json] [--quick] [--only=seq,pipe,sync,spin,spin1,reload,storm] [--rounds=N]\n')
  process.exit(0)
}
const JSON_OUT = flag('json')
const QUICK = flag('quick')
const ROUNDS = Number(opt('rounds', QUICK ? 3 : 5))
const ONLY = new Set(String(opt('only', 'seq,pipe,sync,spin,spin1,reload,storm')).split(','))
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

const log = (...a) => process.stderr.write(a.join(' ') + '\n')
const now = () => performance.now() // ms, sub-µs resolution
const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))
const REQ = Buffer.alloc(64, 0x61) // the 64-byte echo request

// ------------------------------------------------------------------ stats

function quantile (sorted, q) {
  if (sorted.length === 0) return NaN
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[i]
}
function median (xs) {
  const s = Float64Array.from(xs).sort()
  if (s.length === 0) return NaN
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}
function summarize (samples) { // Float64Array (copied, sorted)
  const s = Float64Array.from(samples).sort()
  return { n: s.length, median: quantile(s, 0.5), p99: quantile(s, 0.99), min: s[0], max: s[s.length - 1] }
}
const round3 = (x) => Number.isFinite(x) ? Math.round(x * 1000) / 1000 : x

// Latency of one awaited call at a time, for ms milliseconds. µs per call.
const MAX_SAMPLES = 1 << 20
const sampleBuf = new Float64Array(MAX_SAMPLES)
async function latencyRound (fn, ms) {
  let n = 0
  const end = now() + ms
  for (;;) {
    const t0 = now()
    await fn()
    const t1 = now()
    sampleBuf[n++] = (t1 - t0) * 1000
    if (t1 > end || n === MAX_SAMPLES) break
  }
  return summarize(sampleBuf.subarray(0, n))
}

// `depth` calls in flight for ms milliseconds (each completion issues the
// next). Returns calls/s and the count of failed calls.
function throughputRound (fn, depth, ms) {
  return new Promise(resolve => {
    let issued = 0
    let done = 0
    let failed = 0
    let stop = false
    const t0 = now()
    const end = t0 + ms
    const settle = () => {
      done++
      if (!stop && (done & 31) === 0 && now() > end) stop = true
      if (!stop) { issue(); return }
      if (done === issued) {
        const secs = (now() - t0) / 1000
        resolve({ callsPerSec: done / secs, calls: done, failed })
      }
    }
    const fail = () => { failed++; settle() }
    function issue () { issued++; fn().then(settle, fail) }
    for (let i = 0; i < depth; i++) issue()
  })
}

// A synchronous function in a tight loop for ms milliseconds: ns per call.
function syncRound (fn, ms) {
  const BLOCK = 10000
  let n = 0
  const t0 = now()
  const end = t0 + ms
  let t
  do {
    for (let i = 0; i < BLOCK; i++) fn()
    n += BLOCK
    t = now()
  } while (t < end)
  return ((t - t0) * 1e6) / n
}

// Time on CPU (ns, from /proc/self/task/*/schedstat) of the JS (main) thread
// and of every other thread of the process (poll threads, plugin threads,
// libuv threadpool, V8 helpers). Threads that exit meanwhile are not counted.
function threadTimes () {
  let main = 0
  let rest = 0
  let ok = false
  try {
    for (const tid of fs.readdirSync('/proc/self/task')) {
      let ns
      try { ns = Number(fs.readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]) } catch { continue }
      ok = true
      if (Number(tid) === process.pid) main = ns
      else rest += ns
    }
  } catch {}
  return ok ? { main, rest } : null
}

function cpuPercent (fromUsage, wallMs) {
  const u = process.cpuUsage(fromUsage)
  return ((u.user + u.system) / 1000 / wallMs) * 100 // 100 = one core
}

// ------------------------------------------------------------------ building

function sh (cmd, args) {
  execFileSync(cmd, args, { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] })
}
function newer (out, ...srcs) {
  try {
    const m = fs.statSync(out).mtimeMs
    return srcs.every(s => fs.statSync(s).mtimeMs <= m)
  } catch { return false }
}
function nodeIncludeDir () {
  const cands = [path.resolve(path.dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node']
  return cands.find(d => fs.existsSync(path.join(d, 'node_api.h')))
}
const benchOut = path.join(__dirname, 'out') // git-ignored
function buildPeer () {
  const src = path.join(__dirname, 'peer.c')
  const out = path.join(benchOut, 'peer.node')
  const inc = nodeIncludeDir()
  if (!inc) throw new Error('node_api.h not found')
  fs.mkdirSync(benchOut, { recursive: true })
  if (!newer(out, src)) {
    // N-API symbols stay undefined: the node binary provides them at load.
    sh(process.env.CC || 'cc', ['-O2', '-fPIC', '-shared', '-Wall', `-I${inc}`, '-o', out, src])
  }
  return require(out)
}
// Two builds of the host-driven echo that answer "version" with "1" / "2".
function buildVariants () {
  const src = path.join(root, 'examples', 'echo-host', 'echo.c')
  const hdr = path.join(root, 'csrc', 'include', 'dlhost.h')
  fs.mkdirSync(benchOut, { recursive: true })
  return ['1', '2'].map(v => {
    const out = path.join(benchOut, `echo_v${v}.so`)
    if (!newer(out, src, hdr)) {
      sh(process.env.CC || 'cc', ['-O2', '-fPIC', '-shared', '-Wall', `-I${path.join(root, 'csrc', 'include')}`,
        `-DPLUGIN_VERSION="${v}"`, '-o', out, src])
    }
    return { version: v, path: out }
  })
}

// Atomically replace `target` with a copy of `from` (write a temp, rename).
let installSerial = 0
function install (from, target) {
  const tmp = `${target}.tmp${++installSerial}`
  fs.copyFileSync(from, tmp)
  fs.renameSync(tmp, target)
}

// ------------------------------------------------------------------ sections

const results = {
  meta: {
    date: new Date().toISOString(),
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    kernel: os.release(),
    loadavgStart: os.loadavg().map(round3),
    rounds: ROUNDS,
    roundMs: ROUND_MS,
    command: `node bench/run.js ${argv.join(' ')}`.trim()
  }
}
let peer = null
let napiBlocks = null
let issueCost = null

async function loadAll () {
  const rts = {}
  for (const [abi, p] of Object.entries(LIBS)) {
    if (!fs.existsSync(p)) { log(`  (skip ${abi}: ${path.relative(root, p)} not built)`); continue }
    rts[abi] = await dlhost.load(p, null)
    const back = await rts[abi].call(REQ)
    if (!back.equals(REQ)) throw new Error(`${abi}: echo mismatch`)
  }
  return rts
}

async function warm (fn, ms = 150) {
  const end = now() + ms
  while (now() < end) await fn()
}

// 1. sequential round trip, per ABI, against setImmediate / async_work peers
async function benchSequential (rts) {
  log('sequential round trip (64 B echo, one call in flight)…')
  const subjects = [['setImmediate (peer)', () => new Promise(resolve => setImmediate(resolve))]]
  if (peer) subjects.push(['napi_async_work (peer)', () => peer.echoAsync(REQ)])
  for (const [abi, rt] of Object.entries(rts)) subjects.push([abi, () => rt.call(REQ)])
  for (const [, fn] of subjects) await warm(fn)
  const per = new Map(subjects.map(([name]) => [name, []]))
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, fn] of subjects) per.get(name).push(await latencyRound(fn, ROUND_MS))
  }
  const imm = per.get('setImmediate (peer)')
  const aw = per.get('napi_async_work (peer)')
  return subjects.map(([name]) => {
    const rs = per.get(name)
    return {
      name,
      medianUs: round3(median(rs.map(x => x.median))),
      p99Us: round3(median(rs.map(x => x.p99))),
      roundMediansUs: rs.map(x => round3(x.median)),
      samples: rs.reduce((a, x) => a + x.n, 0),
      vsSetImmediate: round3(median(rs.map((x, i) => x.median / imm[i].median))),
      vsAsyncWork: aw ? round3(median(rs.map((x, i) => x.median / aw[i].median))) : null
    }
  })
}

// 2. pipelined throughput
async function benchPipelined (rts) {
  log('pipelined throughput (1 / 64 / 1024 in flight)…')
  const depths = [1, 64, 1024]
  const subjects = []
  for (const abi of ['host', 'native']) if (rts[abi]) subjects.push([abi, () => rts[abi].call(REQ)])
  if (peer) subjects.push(['napi_async_work (peer)', () => peer.echoAsync(REQ)])
  // The harness's own ceiling: a promise that is already resolved.
  subjects.push(['Promise.resolve (ceiling)', () => Promise.resolve(REQ)])
  const out = []
  for (const depth of depths) {
    const per = new Map(subjects.map(([name]) => [name, []]))
    for (const [, fn] of subjects) await throughputRound(fn, depth, 100)
    for (let r = 0; r < ROUNDS; r++) {
      for (const [name, fn] of subjects) {
        const c0 = threadTimes()
        const x = await throughputRound(fn, depth, ROUND_MS)
        const c1 = threadTimes()
        if (c0 && c1) {
          x.jsNs = (c1.main - c0.main) / x.calls
          x.otherNs = (c1.rest - c0.rest) / x.calls
        }
        per.get(name).push(x)
      }
    }
    const aw = per.get('napi_async_work (peer)')
    for (const [name] of subjects) {
      const rs = per.get(name)
      const jsNs = median(rs.map(x => x.jsNs ?? NaN))
      out.push({
        name,
        depth,
        callsPerSec: Math.round(median(rs.map(x => x.callsPerSec))),
        jsThreadNsPerCall: Math.round(jsNs),
        otherThreadsNsPerCall: Math.round(median(rs.map(x => x.otherNs ?? NaN))),
        jsBoundCeiling: Math.round(1e9 / jsNs),
        roundCallsPerSec: rs.map(x => Math.round(x.callsPerSec)),
        failed: rs.reduce((a, x) => a + x.failed, 0),
        vsAsyncWork: aw ? round3(median(rs.map((x, i) => x.callsPerSec / aw[i].callsPerSec))) : null
      })
    }
  }
  // JS-thread cost of issuing one call (submit + promise), completions aside:
  // 1000 call()s back to back, timed, then awaited.
  issueCost = {}
  for (const abi of ['host', 'native']) {
    if (!rts[abi]) continue
    const rt = rts[abi]
    const per = []
    for (let r = 0; r < 30; r++) {
      const ps = new Array(1000)
      const t0 = now()
      for (let i = 0; i < 1000; i++) ps[i] = rt.call(REQ)
      per.push((now() - t0) * 1000) // ns per call (ms * 1e6 / 1000)
      await Promise.all(ps)
    }
    issueCost[abi] = Math.round(median(per.slice(5)))
  }
  return out
}

// 3. callSync
function benchCallSync (rts) {
  log('callSync (host-driven, 64 B Buffer)…')
  const rt = rts.host
  if (!rt.callSync(REQ).equals(REQ)) throw new Error('callSync: echo mismatch')
  const subjects = [['callSync', () => rt.callSync(REQ)]]
  if (peer) {
    subjects.push(['N-API noop() (peer)', () => peer.noop()])
    subjects.push(['N-API echoSync(buf) (peer)', () => peer.echoSync(REQ)])
    subjects.push(['  same, no result Buffer (peer)', () => peer.echoNoBuf(REQ)])
    // The response in an addon-owned 8 KiB pool, wrapped by a JS view (what
    // Buffer.allocUnsafe does): no napi_create_buffer_copy per call.
    let pool
    subjects.push(['  same, pooled response (peer)', () => {
      const r = peer.echoPooled(REQ)
      if (typeof r !== 'number') return r
      if (r >= 134217728) pool = peer.pool()
      return Buffer.from(pool, (r >>> 14) & 8191, r & 16383)
    }])
  }
  subjects.push(['Buffer.alloc(64) (peer)', () => Buffer.alloc(64)])
  for (const [, fn] of subjects) syncRound(fn, 100)
  const per = new Map(subjects.map(([name]) => [name, []]))
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, fn] of subjects) per.get(name).push(syncRound(fn, ROUND_MS))
  }
  const ref = (n) => per.get(n)
  if (peer) {
    // What the JS thread pays for the pieces dlhost's call paths are made of.
    const f = () => {}
    const blocks = [
      ['napi_create_buffer_copy(64) (callSync result)', () => peer.bufferCopy(64)],
      ['napi_create_arraybuffer(64) (Drain, per batch)', () => peer.arrayBuffer(64)],
      ['napi_make_callback(noop) (Drain, per batch)', () => peer.makeCallback(f)],
      ['Buffer.from(arrayBuffer, off, 64) (per call)', (() => { const ab = new ArrayBuffer(8192); return () => Buffer.from(ab, 64, 64) })()],
      ['new Promise + resolve (per call)', () => { let res; const p = new Promise(resolve => { res = resolve }); res(REQ); return p }]
    ]
    napiBlocks = blocks.map(([name, fn]) => { syncRound(fn, 50); return { name, ns: round3(median([1, 2, 3].map(() => syncRound(fn, ROUND_MS / 3)))) } })
  }
  return subjects.map(([name]) => {
    const rs = per.get(name)
    return {
      name,
      nsPerCall: round3(median(rs)),
      roundNs: rs.map(round3),
      vsNoop: peer ? round3(median(rs.map((x, i) => x / ref('N-API noop() (peer)')[i]))) : null,
      vsEchoSync: peer ? round3(median(rs.map((x, i) => x / ref('N-API echoSync(buf) (peer)')[i]))) : null
    }
  })
}

// Spin knobs: sequential round trip + CPU while busy + CPU of an idle second.
async function benchSpin (rts) {
  log('spin knobs (setSpin(jsNs, pollerNs)) …')
  const settings = [
    { label: 'default (50 µs / 50 µs)', js: 50000, poller: 50000 },
    { label: '0 / 0', js: 0, poller: 0 },
    { label: '20 µs / 50 µs', js: 20000, poller: 50000 },
    { label: '50 µs / 100 µs', js: 50000, poller: 100000 },
    { label: '200 µs / 200 µs', js: 200000, poller: 200000 }
  ]
  const abis = ['host', 'native'].filter(a => rts[a])
  const immFn = () => new Promise(resolve => setImmediate(resolve))
  const rows = []
  for (const s of settings) {
    for (const abi of abis) rts[abi].setSpin(s.js, s.poller)
    const row = { setting: s.label, jsSpinNs: s.js, pollerSpinNs: s.poller }
    const rounds = Math.max(2, Math.min(ROUNDS, 3))
    for (const abi of abis) {
      const fn = () => rts[abi].call(REQ)
      await warm(fn, 100)
      const meds = []; const p99s = []; const ratios = []; const cpus = []
      for (let r = 0; r < rounds; r++) {
        const imm = await latencyRound(immFn, ROUND_MS / 2)
        const u0 = process.cpuUsage(); const t0 = now()
        const x = await latencyRound(fn, ROUND_MS)
        cpus.push(cpuPercent(u0, now() - t0))
        meds.push(x.median); p99s.push(x.p99); ratios.push(x.median / imm.median)
      }
      row[abi] = {
        medianUs: round3(median(meds)),
        p99Us: round3(median(p99s)),
        vsSetImmediate: round3(median(ratios)),
        busyCpuPct: Math.round(median(cpus))
      }
    }
    // Calls have stopped: an idle runtime must not burn CPU.
    if (!NO_IDLE) {
      await sleep(20) // let the spin budgets run out (max 200 µs)
      const u0 = process.cpuUsage(); const t0 = now()
      await sleep(IDLE_MS)
      row.idleCpuPct = round3(cpuPercent(u0, now() - t0))
    }
    rows.push(row)
  }
  for (const abi of abis) rts[abi].setSpin(50000, 50000)
  return rows
}

// The spin settings again, in a child process pinned to one CPU: what a busy
// machine looks like to dlhost when the JS thread and the poll thread have to
// share a core.
function benchSpinPinned () {
  log('spin knobs on one CPU (taskset -c 0, child process)…')
  const { spawnSync } = require('child_process')
  const args = ['-c', '0', process.execPath, __filename, '--only=spin', '--json', '--quick', '--no-idle']
  const r = spawnSync('taskset', args, { encoding: 'utf8', env: process.env, timeout: 60000 })
  if (r.error || r.status !== 0) {
    log(`  (skipped: taskset ${r.error ? r.error.message : `exit ${r.status}: ${String(r.stderr).trim().split('\n').pop()}`})`)
    return null
  }
  return JSON.parse(r.stdout).spin
}

// 4. reload latency + breakdown
async function benchReload (variants) {
  log('reload latency (shadow / drain) and breakdown…')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-bench-'))
  const out = { swaps: SWAPS, soBytes: fs.statSync(variants[0].path).size, strategies: {}, breakdown: {} }
  try {
    // 'shadow, maxQueue 1024': same, with a smaller request ring per version.
    // The cases are interleaved swap by swap (as the other sections
    // interleave their rounds): measured one after the other, the first case
    // paid for the JIT warming up the reload path and looked ~0.4 ms slower.
    const cases = [['shadow', 'shadow', {}], ['drain', 'drain', {}], ['shadow, maxQueue 1024', 'shadow', { maxQueue: 1024 }]]
    const runs = []
    for (const [label, strategy, extra] of cases) {
      const target = path.join(dir, `plugin-${strategy}-${Object.keys(extra).length}.so`)
      install(variants[0].path, target)
      const plugin = await dlhost.reloadable(target, null, { watch: false, strategy, ...extra })
      const run = { label, strategy, target, plugin, events: [], reloadMs: [], firstCallUs: [], retireMs: [], cur: 0 }
      plugin.on('reload', ev => run.events.push(ev.ms))
      runs.push(run)
    }
    for (let i = -5; i < SWAPS; i++) { // five warm-up rounds (JIT)
      for (const run of runs) {
        const { plugin, strategy, target } = run
        run.cur ^= 1
        install(variants[run.cur].path, target)
        const drained = new Promise(resolve => plugin.once('drained', resolve))
        const t0 = now()
        await plugin.reload()
        const t1 = now()
        const v = (await plugin.call('version')).toString()
        const t2 = now()
        if (v !== variants[run.cur].version) throw new Error(`${strategy}: expected version ${variants[run.cur].version}, got ${v}`)
        await Promise.race([drained, sleep(2000)])
        const t3 = now()
        if (i >= 0) {
          run.reloadMs.push(t1 - t0); run.firstCallUs.push((t2 - t1) * 1000); run.retireMs.push(strategy === 'shadow' ? t3 - t1 : 0)
        } else run.events.length = 0
      }
    }
    for (const { label, strategy, plugin, events, reloadMs, firstCallUs, retireMs } of runs) {
      await plugin.close()
      const s = summarize(Float64Array.from(reloadMs))
      out.strategies[label] = {
        medianMs: round3(s.median),
        p90Ms: round3(quantile(Float64Array.from(reloadMs).sort(), 0.9)),
        maxMs: round3(s.max),
        minMs: round3(s.min),
        eventMedianMs: round3(median(events)),
        firstCallUs: round3(median(firstCallUs)),
        retireMs: strategy === 'shadow' ? round3(median(retireMs)) : null
      }
    }

    // ---- watched: the file is replaced, the watcher sees it settle, the
    // reload event says how long from "settled" to "new version serving"
    // (the copy was prepared while the file settled, see docs/reload.md).
    const keepAlive = setInterval(() => {}, 1000) // watchers and their timers are unref'd
    try {
      const wcases = [['shadow', 'shadow', 'load'], ['shadow, prepare: copy', 'shadow', 'copy'], ['shadow, prepare: off', 'shadow', 'off'], ['drain', 'drain', 'load']]
      const wruns = []
      for (const [label, strategy, prepare] of wcases) {
        const target = path.join(dir, `watched-${strategy}-${prepare}.so`)
        install(variants[0].path, target)
        const plugin = await dlhost.reloadable(target, null, { strategy, prepare, settleMs: WATCH_SETTLE_MS })
        wruns.push({ label, strategy, target, plugin, ms: [], prepared: 0, firstCallUs: [], cur: 0 })
      }
      for (let i = -3; i < SWAPS; i++) {
        for (const run of wruns) {
          const { plugin, strategy, target } = run
          run.cur ^= 1
          const reloaded = new Promise(resolve => plugin.once('reload', resolve))
          const drained = strategy === 'shadow' ? new Promise(resolve => plugin.once('drained', resolve)) : null
          install(variants[run.cur].path, target)
          const ev = await Promise.race([reloaded, sleep(5000).then(() => { throw new Error(`${run.label}: no reload event`) })])
          const t1 = now()
          const v = (await plugin.call('version')).toString()
          const t2 = now()
          if (v !== variants[run.cur].version) throw new Error(`${run.label}: expected version ${variants[run.cur].version}, got ${v}`)
          if (drained) await Promise.race([drained, sleep(2000)])
          if (i >= 0) {
            run.ms.push(ev.ms)
            if (ev.prepared) run.prepared++
            run.firstCallUs.push((t2 - t1) * 1000)
          }
        }
      }
      out.watched = { settleMs: WATCH_SETTLE_MS, cases: {} }
      for (const run of wruns) {
        await run.plugin.close()
        const s = summarize(Float64Array.from(run.ms))
        out.watched.cases[run.label] = {
          medianMs: round3(s.median),
          p90Ms: round3(quantile(Float64Array.from(run.ms).sort(), 0.9)),
          minMs: round3(s.min),
          maxMs: round3(s.max),
          prepared: `${run.prepared}/${run.ms.length}`,
          firstCallUs: round3(median(run.firstCallUs))
        }
      }
    } finally {
      clearInterval(keepAlive)
    }

    // ---- breakdown, timed from outside, same file size
    const N = SWAPS
    const src = path.join(dir, 'src.so')
    install(variants[0].path, src)
    const store = await CopyStore.create()
    const b = {}
    try {
      // snapshot (read + sha256 + write + chmod + fsync + read back + verify)
      const snaps = []
      const snapMs = []
      for (let i = 0; i < N; i++) {
        install(variants[i & 1].path, src)
        const t0 = now()
        snaps.push(await store.snapshot(src))
        snapMs.push(now() - t0)
      }
      b.snapshotMs = round3(median(snapMs))
      // the snapshot's steps, replicated with the same (synchronous, as for
      // any file up to 4 MiB) fs calls
      const steps = { readMs: [], sha256Ms: [], writeMs: [], fsyncMs: [], verifyMs: [] }
      for (let i = 0; i < N; i++) {
        let t = now()
        const fd = fs.openSync(src, 'r')
        const st0 = fs.fstatSync(fd); const bytes = Buffer.allocUnsafe(st0.size + 1)
        const n = fs.readSync(fd, bytes, 0, bytes.length, null); fs.readSync(fd, bytes, n, 1, null); fs.fstatSync(fd); fs.closeSync(fd)
        let t2 = now(); steps.readMs.push(t2 - t); t = t2
        crypto.createHash('sha256').update(bytes.subarray(0, n)).digest('hex')
        t2 = now(); steps.sha256Ms.push(t2 - t); t = t2
        const cp = path.join(store.dir, `bench-${i}.so`)
        const o = fs.openSync(cp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o700)
        fs.fchmodSync(o, 0o700); fs.writeSync(o, bytes, 0, n)
        t2 = now(); steps.writeMs.push(t2 - t); t = t2
        fs.fsyncSync(o)
        t2 = now(); steps.fsyncMs.push(t2 - t); t = t2
        fs.closeSync(o)
        const back = fs.readFileSync(cp)
        crypto.createHash('sha256').update(back).digest('hex')
        t2 = now(); steps.verifyMs.push(t2 - t)
        fs.unlinkSync(cp)
      }
      b.snapshotSteps = Object.fromEntries(Object.entries(steps).map(([k, v]) => [k, round3(median(v))]))
      // validate: parseElf + checkHostCompatible + detectAbi on the bytes
      const valMs = []
      for (const s of snaps) {
        const t0 = now()
        const info = elf.parseElf(s.bytes, src)
        elf.checkHostCompatible(info, src)
        elf.detectAbi(info)
        valMs.push(now() - t0)
      }
      b.validateMs = round3(median(valMs))
      // open(): stat + realpath + read/sha256/ELF facts + dlopen, then release (dlclose)
      const openMs = []; const releaseMs = []
      for (const s of snaps.slice(0, N / 2)) {
        const t0 = now()
        const lib = dlhost.open(s.path, { pin: false })
        const t1 = now()
        lib.release()
        openMs.push(t1 - t0); releaseMs.push(now() - t1)
      }
      b.openMs = round3(median(openMs))
      b.releaseMs = round3(median(releaseMs))
      // load(): open + runtime + poll thread + dlhost_open + init event; then unload
      const loadMs = []; const unloadMs = []
      for (const s of snaps.slice(N / 2)) {
        const t0 = now()
        const rt = await dlhost.load(s.path, null, { pin: false })
        const t1 = now()
        await rt.call(REQ)
        const t2 = now()
        await rt.unload()
        loadMs.push(t1 - t0); unloadMs.push(now() - t2)
      }
      b.loadMs = round3(median(loadMs))
      b.unloadMs = round3(median(unloadMs))
      // the same with maxQueue 1024: the request ring is 16 KiB instead of 1 MiB
      const load1kMs = []
      for (let i = 0; i < N / 2; i++) {
        install(variants[i & 1].path, src)
        const s = await store.snapshot(src) // fresh identity: no cached facts
        snaps.push(s)
        const t0 = now()
        const rt = await dlhost.load(s.path, null, { pin: false, maxQueue: 1024 })
        load1kMs.push(now() - t0)
        await rt.unload()
      }
      b.loadSmallQueueMs = round3(median(load1kMs))
      // drain asks the loader whether the old copy is still mapped
      b.isMappedMs = round3(median(snaps.map(s => { const t0 = now(); binding.isMapped(s.path); return now() - t0 })))
      // A lean reload, done from outside with public pieces: synchronous read,
      // sha256, validate, write the copy without fsync or read-back, load with
      // a small ring. Roughly what the reload path costs without the extra
      // threadpool hops, fsync, verification and the 1 MiB ring.
      const leanMs = []
      for (let i = 0; i < N / 2; i++) {
        install(variants[i & 1].path, src)
        const t0 = now()
        const bytes = fs.readFileSync(src)
        crypto.createHash('sha256').update(bytes).digest('hex')
        const info = elf.parseElf(bytes, src)
        elf.checkHostCompatible(info, src)
        elf.detectAbi(info)
        const cp = path.join(store.dir, `lean-${i}.so`)
        fs.writeFileSync(cp, bytes, { mode: 0o700, flag: 'wx' })
        const rt = await dlhost.load(cp, null, { pin: false, maxQueue: 1024 })
        leanMs.push(now() - t0)
        await rt.unload()
        fs.unlinkSync(cp)
      }
      b.leanMs = round3(median(leanMs))
      // remove a copy
      const rmMs = []
      for (const s of snaps) { const t0 = now(); await store.remove(s.path); rmMs.push(now() - t0) }
      b.removeMs = round3(median(rmMs))
    } finally {
      await store.close()
    }
    const shadowMs = out.strategies.shadow.medianMs
    const drainMs = out.strategies.drain.medianMs
    b.shadowRestMs = round3(shadowMs - b.snapshotMs - b.validateMs - b.loadMs)
    b.drainRestMs = round3(drainMs - b.snapshotMs - b.validateMs - b.loadMs - b.unloadMs)
    out.breakdown = b
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return out
}

// 5. throughput during a reload storm (10 reloads/s, alternating two builds)
async function benchStorm (variants) {
  log('reload storm (256 in flight, 10 reloads/s)…')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-bench-'))
  const target = path.join(dir, 'plugin.so')
  install(variants[0].path, target)
  const plugin = await dlhost.reloadable(target, null, { watch: false, strategy: 'shadow' })
  let reloadErrors = 0
  plugin.on('error', () => { reloadErrors++ })
  const fn = () => plugin.call(REQ)
  const steady = []; const storm = []; const reloads = []; const ratios = []
  let failed = 0
  let cur = 0
  try {
    await throughputRound(fn, 256, 200)
    for (let r = 0; r < STORM_PAIRS; r++) {
      const a = await throughputRound(fn, 256, STORM_MS)
      const before = plugin.reloads
      const timer = setInterval(() => {
        cur ^= 1
        install(variants[cur].path, target)
        plugin.reload().catch(() => { reloadErrors++ })
      }, 100)
      const b = await throughputRound(fn, 256, STORM_MS)
      clearInterval(timer)
      await plugin.reload().catch(() => {}) // let the last one finish
      reloads.push(plugin.reloads - before)
      steady.push(a.callsPerSec); storm.push(b.callsPerSec); ratios.push(b.callsPerSec / a.callsPerSec)
      failed += a.failed + b.failed
    }
  } finally {
    await plugin.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return {
    inFlight: 256,
    windowMs: STORM_MS,
    steadyCallsPerSec: Math.round(median(steady)),
    stormCallsPerSec: Math.round(median(storm)),
    ratio: round3(median(ratios)),
    roundRatios: ratios.map(round3),
    reloadsPerWindow: reloads,
    failedCalls: failed,
    reloadErrors
  }
}

// ------------------------------------------------------------------ report

const fmt = (x, d = 2) => x === null || x === undefined || Number.isNaN(x) ? '-' : typeof x === 'number' ? x.toFixed(d) : String(x)
const big = (x) => x >= 1e6 ? `${(x / 1e6).toFixed(2)} M` : x >= 1e3 ? `${(x / 1e3).toFixed(1)} k` : String(x)
function table (title, head, rows) {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map(r => String(r[i]).length)))
  const line = (cells) => cells.map((c, i) => i === 0 ? String(c).padEnd(w[i]) : String(c).padStart(w[i])).join('  ')
  return [`\n${title}`, line(head), w.map(n => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n')
}

function targets (r) {
  const t = []
  const add = (name, value, unit, goal, ok, best) => t.push({ target: name, value, unit, goal, met: value === null || value === undefined ? null : ok, bestRound: best ?? null })
  const host = r.sequential?.find(x => x.name === 'host')
  if (host) add('sequential round trip, host, median', host.medianUs, 'µs', '≤ 3', host.medianUs <= 3, Math.min(...host.roundMediansUs))
  const p = r.pipelined?.find(x => x.name === 'host' && x.depth === 1024)
  if (p) add('pipelined host, 1024 in flight', p.callsPerSec, 'calls/s', '≥ 3 M', p.callsPerSec >= 3e6, Math.max(...p.roundCallsPerSec))
  const cs = r.callSync?.find(x => x.name === 'callSync')
  if (cs) add('callSync, 64 B', cs.nsPerCall, 'ns', '≤ 150', cs.nsPerCall <= 150, Math.min(...cs.roundNs))
  const ws = r.reload?.watched?.cases?.shadow
  if (ws) add('shadow swap, file settled → serving, median', ws.medianMs, 'ms', '≤ 1', ws.medianMs <= 1)
  const sh = r.reload?.strategies?.shadow
  if (sh) add('  (reload() call → serving, no settle window)', sh.medianMs, 'ms', '≤ 1', sh.medianMs <= 1)
  if (r.storm) add('throughput during reload storm', r.storm.ratio * 100, '% of steady', '≥ 90', r.storm.ratio >= 0.9)
  if (r.spin) {
    const worst = Math.max(...r.spin.map(x => x.idleCpuPct))
    add('idle CPU after calls stop (worst setting)', worst, '% of a core', '~0 (≤ 1)', worst <= 1)
  }
  return t
}

function render (r) {
  const out = []
  const m = r.meta
  out.push(`dlhost benchmarks — node ${m.node}, ${m.cpus} CPU(s) (${m.cpuModel}), load avg ${m.loadavgStart.join(' ')} → ${m.loadavgEnd.join(' ')}`)
  out.push(`${m.rounds} rounds × ${m.roundMs} ms per subject, interleaved; median of round medians, ratio = median over rounds of subject/peer`)
  if (r.sequential) {
    out.push(table('1. Sequential round trip, 64 B echo (await call() in a loop)',
      ['subject', 'median µs', 'p99 µs', '× setImmediate', '× async_work', 'round medians µs'],
      r.sequential.map(x => [x.name, fmt(x.medianUs), fmt(x.p99Us), fmt(x.vsSetImmediate), fmt(x.vsAsyncWork), x.roundMediansUs.map(v => fmt(v, 1)).join(' ')])))
  }
  if (r.pipelined) {
    out.push(table('2. Pipelined throughput, 64 B echo (CPU ns per call: JS thread / all other threads; ceiling = 1e9 / JS ns)',
      ['subject', 'in flight', 'calls/s', '× async_work', 'JS ns/call', 'other ns/call', 'JS-bound ceiling', 'failed', 'rounds'],
      r.pipelined.map(x => [x.name, x.depth, big(x.callsPerSec), fmt(x.vsAsyncWork), x.jsThreadNsPerCall, x.otherThreadsNsPerCall, big(x.jsBoundCeiling), x.failed, x.roundCallsPerSec.map(big).join(' | ')])))
  }
  if (r.issueNsPerCall) {
    out.push(`   issuing a call (call(): submit + promise, no completion): ${Object.entries(r.issueNsPerCall).map(([k, v]) => `${k} ${v} ns`).join(', ')} of JS-thread time per call`)
  }
  if (r.callSync) {
    out.push(table('3. callSync, 64 B Buffer (tight loop)',
      ['subject', 'ns/call', '× N-API noop', '× N-API echoSync', 'rounds ns'],
      r.callSync.map(x => [x.name, fmt(x.nsPerCall, 1), fmt(x.vsNoop), fmt(x.vsEchoSync), x.roundNs.map(v => fmt(v, 0)).join(' ')])))
  }
  if (r.napiBlocks) {
    out.push(table('   building blocks, JS thread (tight loop)', ['operation', 'ns'], r.napiBlocks.map(x => [x.name, fmt(x.ns, 1)])))
  }
  const spinTable = (title, rows) => {
    const abis = ['host', 'native'].filter(a => rows[0][a])
    const idle = rows[0].idleCpuPct !== undefined
    return table(title,
      ['setting (js / poller)', ...abis.flatMap(a => [`${a} med µs`, `${a} p99 µs`, `${a} × setImm`, `${a} busy CPU%`]), ...(idle ? ['idle CPU%'] : [])],
      rows.map(x => [x.setting, ...abis.flatMap(a => [fmt(x[a].medianUs), fmt(x[a].p99Us), fmt(x[a].vsSetImmediate), x[a].busyCpuPct]), ...(idle ? [fmt(x.idleCpuPct, 2)] : [])]))
  }
  if (r.spin) {
    out.push(spinTable('Spin knobs: setSpin(jsSpinNs, pollerSpinNs), sequential round trip (busy CPU: whole process, 100 = one core)', r.spin))
    if (r.spinBest) out.push(`best for host-driven latency: ${r.spinBest}`)
  }
  if (r.spinOneCpu) out.push(spinTable('Spin knobs, process pinned to ONE CPU (taskset -c 0): JS thread and poll thread share a core', r.spinOneCpu))
  if (r.reload) {
    const s = r.reload.strategies
    out.push(table(`4. Reload latency (reload() on a ${r.reload.soBytes}-byte host-driven plugin, ${r.reload.swaps} swaps)`,
      ['strategy', 'median ms', 'p90 ms', 'min ms', 'max ms', "'reload' ev ms", 'first call µs', 'old retired ms'],
      Object.entries(s).map(([k, x]) => [k, fmt(x.medianMs, 3), fmt(x.p90Ms, 3), fmt(x.minMs, 3), fmt(x.maxMs, 3), fmt(x.eventMedianMs, 3), fmt(x.firstCallUs, 1), fmt(x.retireMs, 3)])))
    const w = r.reload.watched
    if (w) {
      out.push(table(`   watched: file replaced (rename), settled after ${w.settleMs} ms, 'reload' event ms = settled → new version serving`,
        ['case', 'median ms', 'p90 ms', 'min ms', 'max ms', 'prepared', 'first call µs'],
        Object.entries(w.cases).map(([k, x]) => [k, fmt(x.medianMs, 3), fmt(x.p90Ms, 3), fmt(x.minMs, 3), fmt(x.maxMs, 3), x.prepared, fmt(x.firstCallUs, 1)])))
    }
    const b = r.reload.breakdown
    const st = b.snapshotSteps
    out.push(table('   breakdown (each timed alone, median ms)',
      ['step', 'ms', 'what'],
      [
        ['snapshot', fmt(b.snapshotMs, 3), 'CopyStore.snapshot: read + sha256 + write + fsync (threadpool) + read back + verify'],
        ['  read', fmt(st.readMs, 3), 'open + fstat + read + fstat + close (synchronous)'],
        ['  sha256', fmt(st.sha256Ms, 3), 'hash of the bytes'],
        ['  write', fmt(st.writeMs, 3), 'open O_EXCL + fchmod + write'],
        ['  fsync', fmt(st.fsyncMs, 3), 'fsync of the copy (here synchronous; a reload overlaps it with verify + load)'],
        ['  verify', fmt(st.verifyMs, 3), 'close + read back + sha256'],
        ['validate', fmt(b.validateMs, 3), 'parseElf + checkHostCompatible + detectAbi'],
        ['open()', fmt(b.openMs, 3), 'stat + realpath + facts (read, sha256, ELF) + dlopen'],
        ['release()', fmt(b.releaseMs, 3), 'dlclose + verify unmapped'],
        ['load()', fmt(b.loadMs, 3), 'open() + Runtime + poll thread + dlhost_open + init event'],
        ['load(), maxQueue 1024', fmt(b.loadSmallQueueMs, 3), 'the same with a 16 KiB request ring instead of 1 MiB'],
        ['unload()', fmt(b.unloadMs, 3), 'close queue, poll thread exits, dlclose, verify, event'],
        ['isMapped', fmt(b.isMappedMs, 3), 'dl_iterate_phdr by path'],
        ['remove copy', fmt(b.removeMs, 3), 'unlink'],
        ['lean prototype', fmt(b.leanMs, 3), 'sync read + sha256 + validate + write (no fsync/verify) + load(maxQueue 1024)'],
        ['shadow rest', fmt(b.shadowRestMs, 3), 'shadow median − snapshot − validate − load (negative: the steps overlap)'],
        ['drain rest', fmt(b.drainRestMs, 3), 'drain median − snapshot − validate − load − unload (negative: overlap)']
      ]))
  }
  if (r.storm) {
    const s = r.storm
    out.push(table('5. Throughput during a reload storm (plugin.call, 256 in flight, shadow, 10 reloads/s)',
      ['steady calls/s', 'storm calls/s', 'ratio', 'round ratios', 'reloads/window', 'failed calls', 'reload errors'],
      [[big(s.steadyCallsPerSec), big(s.stormCallsPerSec), `${(s.ratio * 100).toFixed(1)}%`, s.roundRatios.map(x => fmt(x * 100, 0) + '%').join(' '), s.reloadsPerWindow.join(' '), s.failedCalls, s.reloadErrors]]))
  }
  const show = (v, t) => v === null ? '-' : t.unit === 'calls/s' ? big(v) : fmt(v, 2)
  out.push(table('Targets (measured = median over rounds; best = best single round, the quiet-machine estimate)', ['target', 'measured', 'best round', 'goal', 'met'],
    r.targets.map(t => [t.target, `${show(t.value, t)} ${t.unit}`, t.bestRound === null ? '-' : `${show(t.bestRound, t)} ${t.unit}`, `${t.goal} ${t.unit}`, t.met === null ? '-' : t.met ? 'yes' : 'NO'])))
  return out.join('\n') + '\n'
}

// ------------------------------------------------------------------ main

async function main () {
  const t0 = now()
  try { peer = buildPeer() } catch (err) { log(`  (no N-API peers: ${err.message})`) }
  let variants = null
  if (ONLY.has('reload') || ONLY.has('storm')) {
    try { variants = buildVariants() } catch (err) { log(`  (no reload benchmarks: cannot build echo variants: ${err.message})`) }
  }
  const needRts = ['seq', 'pipe', 'sync', 'spin'].some(s => ONLY.has(s))
  const rts = needRts ? await loadAll() : {}
  if (ONLY.has('seq') || ONLY.has('peers')) results.sequential = await benchSequential(rts)
  if (ONLY.has('pipe')) {
    results.pipelined = await benchPipelined(rts)
    results.issueNsPerCall = issueCost
  }
  if (ONLY.has('sync') && rts.host) {
    results.callSync = benchCallSync(rts)
    if (napiBlocks) results.napiBlocks = napiBlocks
  }
  if (ONLY.has('spin')) {
    results.spin = await benchSpin(rts)
    const best = results.spin.filter(x => x.host).sort((a, b) => a.host.vsSetImmediate - b.host.vsSetImmediate)[0]
    if (best) results.spinBest = `${best.setting} (${best.host.medianUs} µs median, ${best.host.busyCpuPct}% CPU while busy, ${best.idleCpuPct}% idle)`
  }
  for (const rt of Object.values(rts)) await rt.unload()
  if (ONLY.has('spin1')) results.spinOneCpu = benchSpinPinned()
  if (variants && ONLY.has('reload')) results.reload = await benchReload(variants)
  if (variants && ONLY.has('storm')) results.storm = await benchStorm(variants)
  results.meta.loadavgEnd = os.loadavg().map(round3)
  results.meta.seconds = round3((now() - t0) / 1000)
  results.targets = targets(results)
  if (JSON_OUT) process.stdout.write(JSON.stringify(results, null, 2) + '\n')
  else process.stdout.write(render(results) + `\n(total ${results.meta.seconds.toFixed(1)} s)\n`)
}

main().catch(err => {
  log(err && err.stack ? err.stack : String(err))
  process.exit(1)
})
