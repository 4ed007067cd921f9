'use strict'
// Pipelined throughput at several depths, and the JS-thread cost of issuing a call.
const { log, now, median, round3, throughputRound, threadTimes } = require('../lib/harness')
const { ROUNDS, ROUND_MS, REQ } = require('../lib/config')

// 2. pipelined throughput
async function benchPipelined (rts, peer) {
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
  const issueCost = {}
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
  return { rows: out, issueCost }
}

module.exports = { benchPipelined }
