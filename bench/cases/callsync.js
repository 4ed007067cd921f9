'use strict'
// callSync in a tight loop beside N-API peers, and the cost of its building blocks.
const { log, median, round3, syncRound } = require('../lib/harness')
const { ROUNDS, ROUND_MS, REQ } = require('../lib/config')

// 3. callSync
function benchCallSync (rts, peer, peers = {}) {
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
  if (peers.koffi) subjects.push(['koffi dlhost_handle, sync (peer)', () => peers.koffi.sync(REQ)])
  subjects.push(['Buffer.alloc(64) (peer)', () => Buffer.alloc(64)])
  for (const [, fn] of subjects) syncRound(fn, 100)
  const per = new Map(subjects.map(([name]) => [name, []]))
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, fn] of subjects) per.get(name).push(syncRound(fn, ROUND_MS))
  }
  const ref = (n) => per.get(n)
  let napiBlocks = null
  if (peer) {
    // What the JS thread pays for the pieces dlhost's call paths are made of.
    const f = () => {}
    const blocks = [
      ['napi_create_buffer_copy(64) (callSync result)', () => peer.bufferCopy(64)],
      ['napi_create_arraybuffer(64) (Settle, per batch)', () => peer.arrayBuffer(64)],
      ['napi_make_callback(noop) (Settle, per batch)', () => peer.makeCallback(f)],
      ['Buffer.from(arrayBuffer, off, 64) (per call)', (() => { const ab = new ArrayBuffer(8192); return () => Buffer.from(ab, 64, 64) })()],
      ['new Promise + resolve (per call)', () => { let res; const p = new Promise(resolve => { res = resolve }); res(REQ); return p }]
    ]
    napiBlocks = blocks.map(([name, fn]) => { syncRound(fn, 50); return { name, ns: round3(median([1, 2, 3].map(() => syncRound(fn, ROUND_MS / 3)))) } })
  }
  const rows = subjects.map(([name]) => {
    const rs = per.get(name)
    return {
      name,
      nsPerCall: round3(median(rs)),
      roundNs: rs.map(round3),
      vsNoop: peer ? round3(median(rs.map((x, i) => x / ref('N-API noop() (peer)')[i]))) : null,
      vsEchoSync: peer ? round3(median(rs.map((x, i) => x / ref('N-API echoSync(buf) (peer)')[i]))) : null,
      // How many times faster than koffi's fastest pattern on the same symbol.
      koffiOver: peers.koffi ? round3(median(rs.map((x, i) => ref('koffi dlhost_handle, sync (peer)')[i] / x))) : null
    }
  })
  return { rows, napiBlocks }
}

module.exports = { benchCallSync }
