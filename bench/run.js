#!/usr/bin/env node
'use strict'
// dlhost benchmarks: `npm run bench` (builds first) or `node bench/run.js`.
//
//   node bench/run.js [--json] [--quick] [--only=seq,pipe,sync,spin,spin1,reload,storm,memory,isolate] [--rounds=N]
//
// Every number is measured in rounds that alternate with a *peer* measured in
// the same process and the same run (a setImmediate round trip, a plain N-API
// call, a napi_async_work round trip, …): on a noisy 2-core VM the absolute
// numbers move by 2x from one minute to the next, the ratios much less.
// Reported: the median over rounds of each round's median / p99, and the
// median over rounds of (subject / peer of the same round).
// See docs/benchmarks.md for what each number means and the measured results.
// The harness is bench/lib/, one file per case in bench/cases/.
const fs = require('fs')
const os = require('os')
const path = require('path')
const { dlhost, argv, JSON_OUT, ONLY, ROUNDS, ROUND_MS, LIBS, REQ, root } = require('./lib/config')
const { log, now, round3 } = require('./lib/harness')
const { buildPeer, buildVariants } = require('./lib/build')
const { render, targets } = require('./lib/report')
const { benchSequential } = require('./cases/sequential')
const { benchPipelined } = require('./cases/pipelined')
const { benchCallSync } = require('./cases/callsync')
const { benchSpin, benchSpinPinned } = require('./cases/spin')
const { benchReload } = require('./cases/reload')
const { benchStorm } = require('./cases/storm')
const { benchTwoWay } = require('./cases/twoway')
const { benchRollout } = require('./cases/rollout')
const { benchBatch } = require('./cases/batch')
const { benchMemory } = require('./cases/memory')
const { benchIsolate } = require('./cases/isolate')
const { benchEfficiency } = require('./cases/efficiency')
const { benchLoader } = require('./cases/loader')
const { benchReloadPeers } = require('./cases/reload-peers')
const { koffiPeer, koffiVersion, workerPeer, ipcPeer } = require('./lib/peers')
const { writeOutputs } = require('./lib/output')

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
    command: `node bench/run.js ${argv.join(' ')}`.trim(),
    koffi: koffiVersion()
  }
}

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

const sections = {}
async function timed (name, fn) {
  const t = now()
  try { return await fn() } finally { sections[name] = round3((now() - t) / 1000) }
}

async function main () {
  const t0 = now()
  let peer = null
  try { peer = buildPeer() } catch (err) { log(`  (no N-API peers: ${err.message})`) }
  let variants = null
  if (ONLY.has('reload') || ONLY.has('storm') || ONLY.has('memory')) {
    try { variants = buildVariants() } catch (err) { log(`  (no reload benchmarks: cannot build echo variants: ${err.message})`) }
  }
  const needRts = ['seq', 'pipe', 'sync', 'spin', 'eff'].some(s => ONLY.has(s))
  const rts = needRts ? await loadAll() : {}
  // The peers a user would pick instead (bench/lib/peers.js).
  const peers = {}
  if (['seq', 'pipe', 'sync', 'eff'].some(s => ONLY.has(s))) {
    try { peers.koffi = koffiPeer() } catch (err) { log(`  (no koffi peer: ${err.message})`) }
    peers.worker = await workerPeer()
    peers.ipc = await ipcPeer()
    if (fs.existsSync(LIBS.host)) peers.isolated = await dlhost.load(LIBS.host, 'bench isolated', { isolate: 'process' })
  }
  if (ONLY.has('seq') || ONLY.has('peers')) results.sequential = await timed('seq', () => benchSequential(rts, peer, peers))
  if (results.sequential) {
    results.sequentialReference = {
      name: 'lua-resty-ffi, 512 B (published)',
      medianUs: 11.8,
      measuredHere: false,
      source: 'lua-resty-ffi\'s benchmark.md: 1.18 s per 100,000 sequential 512-byte calls, one CPU, its machine'
    }
  }
  if (ONLY.has('pipe')) {
    const p = await timed('pipe', () => benchPipelined(rts, peer, peers))
    results.pipelined = p.rows
    results.issueNsPerCall = p.issueCost
  }
  if (ONLY.has('sync') && rts.host) {
    const s = await timed('sync', async () => benchCallSync(rts, peer, peers))
    results.callSync = s.rows
    if (s.napiBlocks) results.napiBlocks = s.napiBlocks
  }
  if (ONLY.has('eff')) results.efficiency = await timed('eff', () => benchEfficiency(rts, peer, peers))
  if (ONLY.has('spin')) {
    results.spin = await timed('spin', () => benchSpin(rts))
    const best = results.spin.filter(x => x.host).sort((a, b) => a.host.vsSetImmediate - b.host.vsSetImmediate)[0]
    if (best) results.spinBest = `${best.setting} (${best.host.medianUs} µs median, ${best.host.busyCpuPct}% CPU while busy, ${best.idleCpuPct}% idle)`
  }
  for (const rt of Object.values(rts)) await rt.unload()
  await peers.isolated?.unload()
  await peers.worker?.dispose()
  peers.ipc?.dispose()
  peers.koffi?.dispose()
  if (ONLY.has('spin1')) results.spinOneCpu = await timed('spin1', async () => benchSpinPinned())
  if (variants && ONLY.has('reload')) {
    results.reload = await timed('reload', () => benchReload(variants))
    results.reloadPeers = await timed('reloadPeers', () => benchReloadPeers(variants))
  }
  if (variants && ONLY.has('storm')) results.storm = await timed('storm', () => benchStorm(variants))
  if (variants && ONLY.has('memory')) results.memory = await timed('memory', () => benchMemory(variants))
  if (ONLY.has('isolate')) results.isolate = await timed('isolate', () => benchIsolate())
  if (ONLY.has('loader')) results.loader = await timed('loader', () => benchLoader())
  if (ONLY.has('twoway')) results.twoway = await timed('twoway', () => benchTwoWay())
  if (ONLY.has('batch')) results.batch = await timed('batch', () => benchBatch())
  if (ONLY.has('rollout')) {
    const v = variants ?? buildVariants()
    results.rollout = await timed('rollout', () => benchRollout(v))
  }
  results.meta.loadavgEnd = os.loadavg().map(round3)
  results.meta.seconds = round3((now() - t0) / 1000)
  results.meta.sectionSeconds = sections
  results.targets = targets(results)
  const files = await writeOutputs(results)
  log(`wrote ${Object.values(files).map(f => path.relative(root, f)).join(', ')}`)
  if (JSON_OUT) process.stdout.write(JSON.stringify(results, null, 2) + '\n')
  else process.stdout.write(render(results) + `\n(total ${results.meta.seconds.toFixed(1)} s)\n`)
}

main().catch(err => {
  log(err && err.stack ? err.stack : String(err))
  process.exit(1)
})
