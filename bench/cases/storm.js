'use strict'
// Throughput during a reload storm (10 reloads/s, alternating two builds,
// 256 calls in flight), beside the same storm by hand with koffi: each
// reload copies the build to a new private path, koffi.load()s it, sends new
// calls to it, and unloads the old one once its calls in flight are answered
// (the drain a careful FFI user writes; unloading earlier would crash).
const fs = require('fs')
const os = require('os')
const path = require('path')
const { install } = require('../lib/build')
const { log, median, round3, throughputRound } = require('../lib/harness')
const { dlhost, STORM_MS, STORM_PAIRS, REQ } = require('../lib/config')
const { koffiEcho, koffiVersion } = require('../lib/peers')

const DEPTH = 256

/** A steady window, then a storm window, with `reload()` called every 100 ms. */
async function pair (fn, reload) {
  const a = await throughputRound(fn, DEPTH, STORM_MS)
  const reloads = []
  const timer = setInterval(() => { reloads.push(reload()) }, 100)
  const b = await throughputRound(fn, DEPTH, STORM_MS)
  clearInterval(timer)
  await Promise.all(reloads) // let the last one finish
  return { steady: a.callsPerSec, storm: b.callsPerSec, failed: a.failed + b.failed, reloads: reloads.length }
}

/** The by-hand koffi host: versions in private copies, each drained before unload(). */
function koffiByHand (dir, variants) {
  let serial = 0
  const open = (from) => {
    const p = path.join(dir, `koffi-storm-${++serial}.so`)
    fs.copyFileSync(from, p)
    return { p, echo: koffiEcho(p), inFlight: 0, retired: false }
  }
  const dispose = (v) => { v.echo.dispose(); fs.rmSync(v.p) }
  let serving = open(variants[0].path)
  let cur = 0
  const call = () => {
    const v = serving
    v.inFlight++
    const settle = () => { if (--v.inFlight === 0 && v.retired) dispose(v) }
    return v.echo.async(REQ).finally(settle)
  }
  const reload = () => {
    cur ^= 1
    const old = serving
    serving = open(variants[cur].path)
    old.retired = true
    if (old.inFlight === 0) dispose(old)
    return Promise.resolve()
  }
  const close = () => { serving.retired = true; if (serving.inFlight === 0) dispose(serving) }
  return { call, reload, close }
}

async function benchStorm (variants) {
  const withKoffi = koffiVersion() !== null
  log(`reload storm (${DEPTH} in flight, 10 reloads/s)${withKoffi ? ', and by hand with koffi' : ''}…`)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-bench-'))
  const target = path.join(dir, 'plugin.so')
  install(variants[0].path, target)
  const plugin = await dlhost.reloadable(target, null, { watch: false, strategy: 'shadow' })
  let reloadErrors = 0
  plugin.on('error', () => { reloadErrors++ })
  const koffi = withKoffi ? koffiByHand(dir, variants) : null
  const d = []
  const k = []
  let cur = 0
  try {
    const dlhostCall = () => plugin.call(REQ)
    const dlhostReload = () => {
      cur ^= 1
      install(variants[cur].path, target)
      return plugin.reload().catch(() => { reloadErrors++ })
    }
    await throughputRound(dlhostCall, DEPTH, 200)
    if (koffi) await throughputRound(koffi.call, DEPTH, 200)
    for (let r = 0; r < STORM_PAIRS; r++) {
      d.push(await pair(dlhostCall, dlhostReload))
      if (koffi) k.push(await pair(koffi.call, koffi.reload))
    }
  } finally {
    await plugin.close()
    koffi?.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
  const summary = (rounds) => ({
    steadyCallsPerSec: Math.round(median(rounds.map(x => x.steady))),
    stormCallsPerSec: Math.round(median(rounds.map(x => x.storm))),
    ratio: round3(median(rounds.map(x => x.storm / x.steady))),
    roundRatios: rounds.map(x => round3(x.storm / x.steady)),
    reloadsPerWindow: rounds.map(x => x.reloads),
    failedCalls: rounds.reduce((n, x) => n + x.failed, 0)
  })
  const out = { inFlight: DEPTH, windowMs: STORM_MS, ...summary(d), reloadErrors }
  if (koffi) {
    out.koffiByHand = { ...summary(k), note: `koffi .async at ${DEPTH} in flight (its max_async_calls); each reload: copy, koffi.load(), new calls to it, unload() of the old one once drained` }
    out.stormOverKoffiStorm = round3(median(d.map((x, i) => x.storm / k[i].storm)))
  }
  return out
}

module.exports = { benchStorm }
