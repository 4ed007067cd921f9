'use strict'
// Isolated runtimes (a child process, the shared-memory channel) beside the
// in-process runtime and a child_process IPC round trip (process.send), in
// one run; child start-up, crash -> serving again, RSS per child; and the
// alternative child host a Node user might write (a node child that uses the
// addon), for its start-up time and RSS.
const { spawn } = require('child_process')
const fs = require('fs')
const path = require('path')
const { log, now, median, round3, latencyRound, throughputRound, warm } = require('../lib/harness')
const { dlhost, ROUNDS, ROUND_MS, LIBS, REQ, pkg } = require('../lib/config')
const { ipcPeer } = require('../lib/peers')

const rssKb = (pid) => { try { return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) } catch { return NaN } }

async function benchIsolate () {
  log('isolated runtimes (child process) beside in-process and child_process IPC…')
  const lib = LIBS.host
  const hard = path.join(__dirname, '..', '..', 'test', 'fixtures', 'out', 'hard_host.so')
  const inproc = await dlhost.load(lib, 'bench in-process')
  const iso = await dlhost.load(lib, 'bench isolated', { isolate: 'process' })
  const ipc = await ipcPeer()
  const ipcCall = () => ipc.call(REQ)
  const subjects = [['in-process', () => inproc.call(REQ)], ['isolated', () => iso.call(REQ)], ['child_process IPC (peer)', ipcCall]]
  for (const [, fn] of subjects) await warm(fn)
  const seq = new Map(subjects.map(([n]) => [n, []]))
  for (let r = 0; r < ROUNDS; r++) for (const [n, fn] of subjects) seq.get(n).push(await latencyRound(fn, ROUND_MS))
  const inMed = seq.get('in-process')
  const sequential = subjects.map(([n]) => ({
    name: n,
    medianUs: round3(median(seq.get(n).map(x => x.median))),
    p99Us: round3(median(seq.get(n).map(x => x.p99))),
    vsInProcess: round3(median(seq.get(n).map((x, i) => x.median / inMed[i].median)))
  }))
  const pipelined = []
  for (const depth of [1, 64, 1024]) {
    const subs = subjects.filter(([n]) => depth === 1 || !n.startsWith('child_process'))
    const per = new Map(subs.map(([n]) => [n, []]))
    for (let r = 0; r < ROUNDS; r++) for (const [n, fn] of subs) per.get(n).push((await throughputRound(fn, depth, ROUND_MS)).callsPerSec)
    const base = per.get('in-process')
    for (const [n] of subs) pipelined.push({ name: n, depth, callsPerSec: Math.round(median(per.get(n))), vsInProcess: round3(median(per.get(n).map((x, i) => x / base[i]))) })
  }
  ipc.dispose()
  await inproc.unload()

  // Start-up: load() of an isolated runtime until its init answered; RSS of the child.
  const starts = []
  const rss = []
  for (let i = 0; i < (ROUNDS + 2); i++) {
    const t0 = now()
    const rt = await dlhost.load(lib, `start ${i}`, { isolate: 'process' })
    starts.push(now() - t0)
    rss.push(rssKb(rt.pid))
    await rt.unload()
  }
  // Crash -> serving again, for a runtime that was serving steadily: a fresh
  // runtime each round, so each crash meets the first back-off step (10 ms);
  // crashes in quick succession wait longer by design (the back-off doubles).
  const recover = []
  for (let i = 0; i < ROUNDS + 2; i++) {
    const crash = await dlhost.load(hard, `bench crash ${i}`, { isolate: 'process' })
    await crash.call('ok')
    await crash.call('segv').catch(() => {})
    const t0 = now()
    await crash.call('after')
    recover.push(now() - t0)
    await crash.unload().catch(() => {})
  }
  // The alternative: a node child running a tiny entry that uses the addon.
  const nodeStarts = []
  const nodeRss = []
  for (let i = 0; i < 3; i++) {
    const t0 = now()
    const child = spawn(process.execPath, ['-e', `const d = require(${JSON.stringify(path.join(pkg, 'dist'))}); d.load(${JSON.stringify(lib)}).then(() => { console.log('ready'); setInterval(() => {}, 1000) })`], { stdio: ['ignore', 'pipe', 'inherit'] })
    await new Promise(resolve => child.stdout.once('data', resolve))
    nodeStarts.push(now() - t0)
    nodeRss.push(rssKb(child.pid))
    child.kill()
  }
  await iso.unload()
  return {
    sequential,
    pipelined,
    startupMs: round3(median(starts)),
    childRssKb: Math.round(median(rss)),
    crashToServingMs: round3(median(recover)),
    nodeChildStartupMs: round3(median(nodeStarts)),
    nodeChildRssKb: Math.round(median(nodeRss))
  }
}

module.exports = { benchIsolate }
