'use strict'
// Efficiency: CPU per call (every thread, from schedstat: the process's,
// and a child's for the peers that have one) when calls arrive at a fixed
// 1,000/s and 10,000/s, an open loop as a mostly idle server sees them.
// Spinning pollers buy latency with CPU; this is what they cost, and the
// latency each subject's calls see at that rate (issue to settle).
const { log, now, sleep, median, quantile, round3, cpuNs } = require('../lib/harness')
const { QUICK, ROUNDS, REQ } = require('../lib/config')

/**
 * Calls `fn` at `rate` per second for `ms` (an open loop: calls are issued
 * on time whether or not earlier ones answered), waits for the last answer,
 * and returns CPU ns per call over the pids, the calls made and their
 * latencies (µs).
 */
async function fixedRate (fn, rate, ms, pids) {
  let issued = 0
  let done = 0
  let failed = 0
  const lat = []
  const c0 = cpuNs(pids)
  const t0 = now()
  for (;;) {
    const t = now() - t0
    if (t >= ms) break
    const due = Math.floor((t * rate) / 1000)
    while (issued < due) {
      issued++
      const c0 = now()
      fn().then(() => { done++; lat.push((now() - c0) * 1000) }, () => { done++; failed++ })
    }
    await sleep(1) // a timer tick, as a server's event loop would be between requests
  }
  while (done < issued) await sleep(1)
  const wallMs = now() - t0
  const cpu = cpuNs(pids) - c0
  lat.sort((a, b) => a - b)
  return { nsPerCall: cpu / issued, cpuPct: (cpu / 1e6 / wallMs) * 100, calls: issued, failed, p50Us: quantile(lat, 0.5), p99Us: quantile(lat, 0.99) }
}

async function benchEfficiency (rts, peer, peers) {
  const rates = [1000, 10000]
  const ms = QUICK ? 200 : 1500
  log(`efficiency: CPU per call at ${rates.join(' and ')} calls/s (${ms} ms per round)…`)
  const self = [process.pid]
  const subjects = []
  for (const abi of ['host', 'native']) if (rts[abi]) subjects.push([abi, () => rts[abi].call(REQ), self])
  if (peers.isolated) subjects.push(['host, isolated', () => peers.isolated.call(REQ), [process.pid, peers.isolated.pid]])
  if (peer) subjects.push(['napi_async_work (peer)', () => peer.echoAsync(REQ), self])
  if (peers.koffi) subjects.push(['koffi .async (peer)', () => peers.koffi.async(REQ), self])
  if (peers.worker) subjects.push(['worker_threads postMessage (peer)', () => peers.worker.call(REQ), self])
  if (peers.ipc) subjects.push(['child_process IPC (peer)', () => peers.ipc.call(REQ), [process.pid, peers.ipc.pid]])
  // The floor: the same timer loop issuing nothing but resolved promises.
  subjects.push(['timer loop only (floor)', () => Promise.resolve(), self])
  const rounds = Math.max(2, ROUNDS - 2)
  const out = []
  for (const rate of rates) {
    const per = new Map(subjects.map(([name]) => [name, []]))
    for (let r = 0; r < rounds; r++) {
      for (const [name, fn, pids] of subjects) per.get(name).push(await fixedRate(fn, rate, ms, pids))
    }
    // Ratios per round, to koffi .async measured in the same round; and the
    // same over the floor (what each adds to the timer loop's own CPU).
    const koffi = per.get('koffi .async (peer)')
    const floor = per.get('timer loop only (floor)')
    for (const [name] of subjects) {
      const rs = per.get(name)
      out.push({
        name,
        rate,
        cpuNsPerCall: Math.round(median(rs.map(x => x.nsPerCall))),
        cpuPctOfCore: round3(median(rs.map(x => x.cpuPct))),
        vsKoffi: koffi ? round3(median(rs.map((x, i) => x.nsPerCall / koffi[i].nsPerCall))) : null,
        overFloorVsKoffi: koffi ? round3(median(rs.map((x, i) => (x.nsPerCall - floor[i].nsPerCall) / (koffi[i].nsPerCall - floor[i].nsPerCall)))) : null,
        p50Us: round3(median(rs.map(x => x.p50Us))),
        p99Us: round3(median(rs.map(x => x.p99Us))),
        roundNsPerCall: rs.map(x => Math.round(x.nsPerCall)),
        failed: rs.reduce((a, x) => a + x.failed, 0)
      })
    }
  }
  return out
}

module.exports = { benchEfficiency }
