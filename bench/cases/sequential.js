'use strict'
// Sequential round trip per ABI, beside the setImmediate and napi_async_work peers.
const { log, median, round3, latencyRound, warm } = require('../lib/harness')
const { ROUNDS, ROUND_MS, REQ } = require('../lib/config')

// 1. sequential round trip, per ABI, against setImmediate / async_work peers
async function benchSequential (rts, peer, peers = {}) {
  log('sequential round trip (64 B echo, one call in flight)…')
  const subjects = [['setImmediate (peer)', () => new Promise(resolve => setImmediate(resolve))]]
  if (peer) subjects.push(['napi_async_work (peer)', () => peer.echoAsync(REQ)])
  if (peers.koffi) subjects.push(['koffi .async (peer)', () => peers.koffi.async(REQ)])
  if (peers.worker) subjects.push(['worker_threads postMessage (peer)', () => peers.worker.call(REQ)])
  if (peers.ipc) subjects.push(['child_process IPC (peer)', () => peers.ipc.call(REQ)])
  for (const [abi, rt] of Object.entries(rts)) subjects.push([abi, () => rt.call(REQ)])
  if (peers.isolated) subjects.push(['host, isolated', () => peers.isolated.call(REQ)])
  for (const [, fn] of subjects) await warm(fn)
  const per = new Map(subjects.map(([name]) => [name, []]))
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, fn] of subjects) per.get(name).push(await latencyRound(fn, ROUND_MS))
  }
  const imm = per.get('setImmediate (peer)')
  const aw = per.get('napi_async_work (peer)')
  const ka = per.get('koffi .async (peer)')
  return subjects.map(([name]) => {
    const rs = per.get(name)
    return {
      name,
      medianUs: round3(median(rs.map(x => x.median))),
      p99Us: round3(median(rs.map(x => x.p99))),
      roundMediansUs: rs.map(x => round3(x.median)),
      samples: rs.reduce((a, x) => a + x.n, 0),
      vsSetImmediate: round3(median(rs.map((x, i) => x.median / imm[i].median))),
      vsAsyncWork: aw ? round3(median(rs.map((x, i) => x.median / aw[i].median))) : null,
      // How many times faster than the peer (its latency over this one's), per round.
      asyncWorkOver: aw ? round3(median(rs.map((x, i) => aw[i].median / x.median))) : null,
      koffiAsyncOver: ka ? round3(median(rs.map((x, i) => ka[i].median / x.median))) : null
    }
  })
}

module.exports = { benchSequential }
