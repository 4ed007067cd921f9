'use strict'
// callBatch() against pipelined call() (docs/batch.md): items per second
// with batches of 256 (4 batches in flight), beside call() at 1024 in
// flight and the harness's own Promise.resolve ceiling, interleaved rounds.
const { log, median, round3, throughputRound } = require('../lib/harness')
const { dlhost, LIBS, REQ, ROUNDS, ROUND_MS } = require('../lib/config')

async function benchBatch () {
  log('callBatch (256 a batch) beside pipelined call() (1024 in flight)…')
  const rt = await dlhost.load(LIBS.host, 'bench batch')
  const batch = Array.from({ length: 256 }, () => REQ)
  const subjects = [
    ['call(), 1024 in flight', () => rt.call(REQ), 1024, 1],
    ['callBatch(256), 4 in flight', () => rt.callBatch(batch), 4, 256],
    ['Promise.resolve (ceiling), 1024 in flight', () => Promise.resolve(REQ), 1024, 1]
  ]
  const per = new Map(subjects.map(([n]) => [n, []]))
  for (const [, fn, depth] of subjects) await throughputRound(fn, depth, 100)
  for (let r = 0; r < ROUNDS; r++) {
    for (const [n, fn, depth, items] of subjects) per.get(n).push((await throughputRound(fn, depth, ROUND_MS)).callsPerSec * items)
  }
  await rt.unload()
  const call = per.get('call(), 1024 in flight')
  const ceiling = per.get('Promise.resolve (ceiling), 1024 in flight')
  return subjects.map(([n]) => ({
    name: n,
    itemsPerSec: Math.round(median(per.get(n))),
    roundItemsPerSec: per.get(n).map(Math.round),
    vsCall: round3(median(per.get(n).map((x, i) => x / call[i]))),
    vsCeiling: round3(median(per.get(n).map((x, i) => x / ceiling[i])))
  }))
}

module.exports = { benchBatch }
