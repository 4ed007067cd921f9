'use strict'
// Safe rollout, in one run:
// - pipelined throughput (1024 in flight) with latency recording on and off,
//   through a Runtime and through a Plugin (whose per-version counts are
//   always kept), interleaved rounds;
// - throughput during a canary period (10 % of calls to the new build) against
//   the steady state before it;
// - the time from minCalls reached to promote or rollback decided.
const fs = require('fs')
const os = require('os')
const path = require('path')
const { install } = require('../lib/build')
const { log, median, round3, throughputRound } = require('../lib/harness')
const { dlhost, LIBS, REQ, ROUNDS, ROUND_MS, QUICK } = require('../lib/config')

async function benchRollout (variants) {
  log('safe rollout: metrics on vs off, throughput during a canary, decision time…')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-bench-rollout-'))
  const out = {}
  try {
    // 1. Recording on vs off.
    const on = await dlhost.load(LIBS.host, 'metrics on')
    const off = await dlhost.load(LIBS.host, 'metrics off', { metrics: false })
    const tOn = path.join(dir, 'on.so')
    const tOff = path.join(dir, 'off.so')
    install(variants[0].path, tOn)
    install(variants[0].path, tOff)
    const pOn = await dlhost.reloadable(tOn, null, { watch: false })
    const pOff = await dlhost.reloadable(tOff, null, { watch: false, metrics: false })
    const subjects = [['Runtime, metrics on', () => on.call(REQ)], ['Runtime, metrics off', () => off.call(REQ)],
      ['Plugin, metrics on', () => pOn.call(REQ)], ['Plugin, metrics off', () => pOff.call(REQ)]]
    const per = new Map(subjects.map(([n]) => [n, []]))
    for (const [, fn] of subjects) await throughputRound(fn, 1024, 100)
    for (let r = 0; r < ROUNDS; r++) for (const [n, fn] of subjects) per.get(n).push((await throughputRound(fn, 1024, ROUND_MS)).callsPerSec)
    out.recording = subjects.map(([n]) => ({ name: n, callsPerSec: Math.round(median(per.get(n))), roundCallsPerSec: per.get(n).map(Math.round) }))
    const ratio = (a, b) => round3(median(per.get(a).map((x, i) => x / per.get(b)[i])))
    out.recordingOnOverOff = { runtime: ratio('Runtime, metrics on', 'Runtime, metrics off'), plugin: ratio('Plugin, metrics on', 'Plugin, metrics off') }
    await on.unload()
    await off.unload()
    await pOn.close()
    await pOff.close()

    // 2. A canary period against the steady state before it (256 in flight).
    const target = path.join(dir, 'canary.so')
    install(variants[0].path, target)
    const plugin = await dlhost.reloadable(target, null, { watch: false, rollout: { canary: 0.1, minCalls: 1e9, maxMs: 1e9 } })
    const fn = () => plugin.call(REQ)
    const steady = []
    const during = []
    let cur = 0
    for (let r = 0; r < ROUNDS; r++) {
      steady.push((await throughputRound(fn, 256, ROUND_MS)).callsPerSec)
      cur ^= 1
      install(variants[cur].path, target)
      const reloading = plugin.reload()
      while (plugin.canary === null) await new Promise(resolve => setImmediate(resolve))
      during.push((await throughputRound(fn, 256, ROUND_MS)).callsPerSec)
      await plugin.promote()
      await reloading
    }
    out.canary = { share: 0.1, inFlight: 256, steadyCallsPerSec: Math.round(median(steady)), canaryCallsPerSec: Math.round(median(during)), ratio: round3(median(during.map((x, i) => x / steady[i]))) }

    // 3. Decision time: minCalls reached -> promoted (256 in flight).
    const decisions = []
    const dp = await dlhost.reloadable(path.join(dir, 'canary.so'), null, { watch: false, rollout: { canary: 0.1, minCalls: QUICK ? 500 : 2000 } })
    dp.on('promote', ev => decisions.push(ev.decisionMs))
    let stop = false
    const pump = async () => { while (!stop) await dp.call(REQ).catch(() => {}) }
    const pumps = Array.from({ length: 256 }, pump)
    for (let r = 0; r < ROUNDS; r++) {
      cur ^= 1
      install(variants[cur].path, target)
      await dp.reload()
    }
    stop = true
    await Promise.all(pumps)
    await dp.close()
    await plugin.close()
    out.decision = { minCalls: QUICK ? 500 : 2000, rounds: decisions.length, medianMs: round3(median(decisions)), maxMs: round3(Math.max(...decisions)) }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return out
}

module.exports = { benchRollout }
