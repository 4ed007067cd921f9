'use strict'
// Reload beside what a user would do by hand, and reload under load:
// - dlhost shadow reload() with no call in flight, and while 256 calls are
//   kept in flight (each answer issues the next), interleaved swap by swap;
// - "by hand with koffi": copy the build to a new private path,
//   koffi.load() it, dlhost_open a state, swap the function in, then
//   dlhost_close + unload() the old one, as a user of an FFI would.
// Each is timed from reload start to the new version answering.
const fs = require('fs')
const os = require('os')
const path = require('path')
const { log, now, median, round3, quantile } = require('../lib/harness')
const { dlhost, QUICK, REQ } = require('../lib/config')
const { install } = require('../lib/build')

const { koffiEcho, koffiVersion } = require('../lib/peers')

function stats (ms) {
  const s = Float64Array.from(ms).sort()
  return { medianMs: round3(median(ms)), p90Ms: round3(quantile(s, 0.9)), maxMs: round3(s[s.length - 1]) }
}

/** Keeps `depth` calls in flight on `plugin` until stop(); resolves with the calls made and failed. */
function pump (plugin, depth) {
  let stopped = false
  let inFlight = 0
  let calls = 0
  let failed = 0
  let finish
  const done = new Promise(resolve => { finish = resolve })
  const issue = () => {
    inFlight++
    plugin.call(REQ).then(() => { calls++ }, () => { failed++ }).finally(() => {
      inFlight--
      if (!stopped) issue()
      else if (inFlight === 0) finish({ calls, failed })
    })
  }
  for (let i = 0; i < depth; i++) issue()
  return { stop: () => { stopped = true; return done } }
}

async function benchReloadPeers (variants) {
  const swaps = QUICK ? 10 : 30
  log(`reload: idle, under load (256 in flight) and by hand with koffi (${swaps} swaps each)…`)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-bench-reload-'))
  const out = { swaps }
  try {
    const idleTarget = path.join(dir, 'idle.so')
    const busyTarget = path.join(dir, 'busy.so')
    install(variants[0].path, idleTarget)
    install(variants[0].path, busyTarget)
    const idle = await dlhost.reloadable(idleTarget, null, { watch: false, strategy: 'shadow' })
    const busy = await dlhost.reloadable(busyTarget, null, { watch: false, strategy: 'shadow' })
    const idleMs = []
    const busyMs = []
    let callsDuring = 0
    let failed = 0
    let cur = 0
    const swap = async (plugin, target, into, record) => {
      install(variants[cur].path, target)
      const t0 = now()
      await plugin.reload()
      const v = (await plugin.call('version')).toString()
      if (record) into.push(now() - t0)
      if (v !== variants[cur].version) throw new Error(`reload: expected version ${variants[cur].version}, got ${v}`)
    }
    for (let i = -3; i < swaps; i++) {
      cur ^= 1
      await swap(idle, idleTarget, idleMs, i >= 0) // nothing else running
      // 256 in flight, in their stride (answered and reissued) before the swap starts.
      const load = pump(busy, 256)
      for (let k = 0; k < 20; k++) await new Promise(resolve => setImmediate(resolve)) // a few turns of answers
      await swap(busy, busyTarget, busyMs, i >= 0)
      const r = await load.stop()
      callsDuring += r.calls
      failed += r.failed
    }
    await idle.close()
    await busy.close()
    out.idle = stats(idleMs)
    out.underLoad = { inFlight: 256, ...stats(busyMs), callsDuring, failed }
    out.underLoadOverIdle = round3(median(busyMs.map((x, i) => x / idleMs[i])))

    if (koffiVersion() !== null) {
      // By hand: what an FFI user writes to swap a rebuilt library in.
      let serial = 0
      const loadVersion = (from) => {
        const p = path.join(dir, `koffi-${++serial}.so`)
        fs.copyFileSync(from, p)
        return { p, echo: koffiEcho(p) }
      }
      let serving = loadVersion(variants[0].path)
      const handMs = []
      cur = 0
      for (let i = -3; i < swaps; i++) {
        cur ^= 1
        const t0 = now()
        const next = loadVersion(variants[cur].path)
        const old = serving
        serving = next // the swap: new calls go to the new function
        const v = serving.echo.sync(Buffer.from('version')).toString()
        if (i >= 0) handMs.push(now() - t0)
        old.echo.dispose()
        fs.rmSync(old.p)
        if (v !== variants[cur].version) throw new Error(`koffi by hand: expected version ${variants[cur].version}, got ${v}`)
      }
      serving.echo.dispose()
      out.koffiByHand = { ...stats(handMs), note: 'copy to a new path, koffi.load(), dlhost_open, swap, then dlhost_close + unload() of the old one; no drain, no rollback, no verification' }
      out.idleOverKoffiByHand = round3(median(idleMs.map((x, i) => x / handMs[i])))
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return out
}

module.exports = { benchReloadPeers }
