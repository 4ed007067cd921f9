'use strict'
// Pipelined throughput at several depths, and the JS-thread cost of issuing a call.
const { log, now, median, round3, throughputRound, threadTimes } = require('../lib/harness')
const { QUICK, ROUNDS, ROUND_MS, REQ } = require('../lib/config')

// 2. pipelined throughput
async function benchPipelined (rts, peer, peers = {}) {
  const depths = [1, 16, 256, 1024, 4096]
  log(`pipelined throughput (${depths.join(' / ')} in flight)…`)
  const subjects = []
  for (const abi of ['host', 'native']) if (rts[abi]) subjects.push([abi, () => rts[abi].call(REQ)])
  if (peer) subjects.push(['napi_async_work (peer)', () => peer.echoAsync(REQ)])
  // koffi runs at most max_async_calls (256) at once and throws past it: its
  // rows at deeper depths run at that cap (cappedAt says so).
  if (peers.koffi) subjects.push(['koffi .async (peer)', () => peers.koffi.async(REQ), peers.koffi.cap])
  if (peers.worker) subjects.push(['worker_threads postMessage (peer)', () => peers.worker.call(REQ)])
  if (peers.ipc) subjects.push(['child_process IPC (peer)', () => peers.ipc.call(REQ)])
  // The harness's own ceiling: a promise that is already resolved.
  subjects.push(['Promise.resolve (ceiling)', () => Promise.resolve(REQ)])
  const out = []
  for (const depth of depths) {
    const per = new Map(subjects.map(([name]) => [name, []]))
    const at = (cap) => Math.min(depth, cap ?? Infinity)
    for (const [, fn, cap] of subjects) await throughputRound(fn, at(cap), QUICK ? 50 : 100)
    for (let r = 0; r < ROUNDS; r++) {
      for (const [name, fn, cap] of subjects) {
        const c0 = threadTimes()
        const x = await throughputRound(fn, at(cap), QUICK ? 100 : ROUND_MS)
        const c1 = threadTimes()
        if (c0 && c1) {
          x.jsNs = (c1.main - c0.main) / x.calls
          x.otherNs = (c1.rest - c0.rest) / x.calls
        }
        per.get(name).push(x)
      }
    }
    const aw = per.get('napi_async_work (peer)')
    const ka = per.get('koffi .async (peer)')
    for (const [name, , cap] of subjects) {
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
        cappedAt: at(cap) < depth ? at(cap) : null,
        vsAsyncWork: aw ? round3(median(rs.map((x, i) => x.callsPerSec / aw[i].callsPerSec))) : null,
        vsKoffiAsync: ka ? round3(median(rs.map((x, i) => x.callsPerSec / ka[i].callsPerSec))) : null
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
