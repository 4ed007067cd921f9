'use strict'
// Renders a run's results as tables, and checks the targets.
const round3 = (x) => Math.round(x * 1000) / 1000
const fmt = (x, d = 2) => x === null || x === undefined || Number.isNaN(x) ? '-' : typeof x === 'number' ? x.toFixed(d) : String(x)
const big = (x) => x >= 1e6 ? `${(x / 1e6).toFixed(2)} M` : x >= 1e3 ? `${(x / 1e3).toFixed(1)} k` : String(x)
function table (title, head, rows) {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map(r => String(r[i]).length)))
  const line = (cells) => cells.map((c, i) => i === 0 ? String(c).padEnd(w[i]) : String(c).padStart(w[i])).join('  ')
  return [`\n${title}`, line(head), w.map(n => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n')
}

function targets (r) {
  const t = []
  const add = (name, value, unit, goal, ok, best) => t.push({ target: name, value, unit, goal, met: value === null || value === undefined ? null : ok, bestRound: best ?? null })
  const host = r.sequential?.find(x => x.name === 'host')
  if (host) add('sequential round trip, host, median', host.medianUs, 'µs', '≤ 3', host.medianUs <= 3, Math.min(...host.roundMediansUs))
  const p = r.pipelined?.find(x => x.name === 'host' && x.depth === 1024)
  if (p) add('pipelined host, 1024 in flight', p.callsPerSec, 'calls/s', '≥ 3 M', p.callsPerSec >= 3e6, Math.max(...p.roundCallsPerSec))
  const cs = r.callSync?.find(x => x.name === 'callSync')
  if (cs) add('callSync, 64 B', cs.nsPerCall, 'ns', '≤ 150', cs.nsPerCall <= 150, Math.min(...cs.roundNs))
  if (cs?.koffiOver) add('callSync, × faster than koffi sync (same symbol)', cs.koffiOver, '×', '≥ 4', cs.koffiOver >= 4)
  if (host?.koffiAsyncOver) add('sequential host, × faster than koffi .async', host.koffiAsyncOver, '×', '≥ 20', host.koffiAsyncOver >= 20)
  if (host?.asyncWorkOver) add('sequential host, × faster than napi_async_work', host.asyncWorkOver, '×', '≥ 20', host.asyncWorkOver >= 20)
  if (p?.vsKoffiAsync) add('pipelined host 1024, × koffi .async (at its cap)', p.vsKoffiAsync, '×', '≥ 100', p.vsKoffiAsync >= 100)
  if (p?.vsAsyncWork) add('pipelined host 1024, × napi_async_work', p.vsAsyncWork, '×', '≥ 10', p.vsAsyncWork >= 10)
  const ws = r.reload?.watched?.cases?.shadow
  if (ws) add('shadow swap, file settled → serving, median', ws.medianMs, 'ms', '≤ 1', ws.medianMs <= 1)
  const sh = r.reload?.strategies?.shadow
  if (sh) add('  (reload() call → serving, no settle window)', sh.medianMs, 'ms', '≤ 1', sh.medianMs <= 1)
  if (r.reloadPeers) add('reload under load (256 in flight), × idle reload', r.reloadPeers.underLoadOverIdle, '×', '≤ 2', r.reloadPeers.underLoadOverIdle <= 2)
  if (r.storm) add('throughput during reload storm', r.storm.ratio * 100, '% of steady', '≥ 90', r.storm.ratio >= 0.9)
  const iso = r.isolate
  if (iso) {
    const s = iso.sequential.find(x => x.name === 'isolated')
    add('isolated sequential round trip, × in-process', s.vsInProcess, '×', '≤ 3', s.vsInProcess <= 3)
    add('isolated sequential round trip', s.medianUs, 'µs', '≤ 20', s.medianUs <= 20)
    const p = iso.pipelined.find(x => x.name === 'isolated' && x.depth === 1024)
    add('isolated pipelined 1024, × in-process', p.vsInProcess, '×', '≥ 0.5', p.vsInProcess >= 0.5)
    add('isolated pipelined 1024', p.callsPerSec, 'calls/s', '≥ 1 M', p.callsPerSec >= 1e6)
    add('isolated crash → serving', iso.crashToServingMs, 'ms', '≤ 50', iso.crashToServingMs <= 50)
  }
  const tw = r.twoway
  if (tw) {
    const m = tw.messages.find(x => x.name === 'dlhost, in process')
    add('messages from one plugin thread into JS', m.messagesPerSec, 'msgs/s', '≥ 5 M', m.messagesPerSec >= 5e6, Math.max(...m.roundMessagesPerSec))
    const s = tw.streams.find(x => x.name === 'dlhost, in process')
    add('stream throughput, 64 KiB chunks', s.gbPerSec, 'GB/s', '≥ 2', s.gbPerSec >= 2, Math.max(...s.roundGbPerSec))
    const busy = tw.pause.find(x => x.inFlight > 0)
    add('reload pause with a 1 MiB state, beyond the drain (64 in flight)', busy.handoverMsMedian, 'ms', '≤ 1', busy.handoverMsMedian <= 1)
  }
  // Efficiency (adaptive spinning): CPU per call beside koffi .async in the
  // same round, and what the spinning buys back to back, against the
  // figures of the last full run before it (4509eae: sequential host
  // 1.744 × setImmediate; pipelined host 1024 0.311 × Promise.resolve).
  for (const rate of [1000, 10000]) {
    const e = r.efficiency?.find(x => x.name === 'host' && x.rate === rate)
    if (e?.vsKoffi != null) add(`CPU per call at ${rate.toLocaleString('en')}/s, host, × koffi .async`, e.vsKoffi, '×', '≤ 0.2', e.vsKoffi <= 0.2)
  }
  if (host?.vsSetImmediate) add('sequential host × setImmediate, ÷ before adaptive spinning (1.744)', round3(host.vsSetImmediate / 1.744), '×', '≤ 1.2', host.vsSetImmediate / 1.744 <= 1.2)
  const ceil = r.pipelined?.find(x => x.name === 'Promise.resolve (ceiling)')
  if (p && ceil) {
    const v = round3(p.callsPerSec / ceil.callsPerSec / 0.311)
    add('pipelined host 1024 × Promise.resolve, ÷ before adaptive spinning (0.311)', v, '×', '≥ 0.9 (noise)', v >= 0.9)
  }
  const bt = r.batch?.find(x => x.name.startsWith('callBatch'))
  if (bt) add('callBatch(256) items/s, × pipelined call() at 1024', bt.vsCall, '×', '≥ 3', bt.vsCall >= 3)
  const ro = r.rollout
  if (ro) {
    add('pipelined 1024 via Plugin, metrics on ÷ off', ro.recordingOnOverOff.plugin * 100, '%', '≥ 97', ro.recordingOnOverOff.plugin >= 0.97)
    add('pipelined 1024 via Runtime, metrics on ÷ off', ro.recordingOnOverOff.runtime * 100, '%', '≥ 97', ro.recordingOnOverOff.runtime >= 0.97)
  }
  if (r.spin) {
    const worst = Math.max(...r.spin.map(x => x.idleCpuPct))
    add('idle CPU after calls stop (worst setting)', worst, '% of a core', '~0 (≤ 1)', worst <= 1)
  }
  return t
}

function render (r) {
  const out = []
  const m = r.meta
  out.push(`dlhost benchmarks — node ${m.node}, ${m.cpus} CPU(s) (${m.cpuModel}), load avg ${m.loadavgStart.join(' ')} → ${m.loadavgEnd.join(' ')}`)
  out.push(`${m.rounds} rounds × ${m.roundMs} ms per subject, interleaved; median of round medians, ratio = median over rounds of subject/peer`)
  if (r.sequential) {
    out.push(table('1. Sequential round trip, 64 B echo (await call() in a loop)',
      ['subject', 'median µs', 'p99 µs', '× setImmediate', '× async_work', 'koffi .async ÷', 'async_work ÷', 'round medians µs'],
      [...r.sequential.map(x => [x.name, fmt(x.medianUs), fmt(x.p99Us), fmt(x.vsSetImmediate), fmt(x.vsAsyncWork), fmt(x.koffiAsyncOver, 1), fmt(x.asyncWorkOver, 1), x.roundMediansUs.map(v => fmt(v, 1)).join(' ')]),
        ...(r.sequentialReference ? [[`${r.sequentialReference.name} *`, fmt(r.sequentialReference.medianUs, 1), '-', '-', '-', '-', '-', '-']] : [])]))
    if (r.sequentialReference) out.push(`   * reference, NOT measured here: ${r.sequentialReference.source}`)
    out.push('   "koffi .async ÷" and "async_work ÷": how many times faster than that peer (its median latency over this one\'s, per round)')
  }
  if (r.pipelined) {
    out.push(table('2. Pipelined throughput, 64 B echo (CPU ns per call: JS thread / all other threads; ceiling = 1e9 / JS ns)',
      ['subject', 'in flight', 'calls/s', '× async_work', '× koffi .async', 'JS ns/call', 'other ns/call', 'JS-bound ceiling', 'failed', 'rounds'],
      r.pipelined.map(x => [x.name, x.cappedAt ? `${x.depth} (cap ${x.cappedAt})` : x.depth, big(x.callsPerSec), fmt(x.vsAsyncWork), fmt(x.vsKoffiAsync, 1), x.jsThreadNsPerCall, x.otherThreadsNsPerCall, big(x.jsBoundCeiling), x.failed, x.roundCallsPerSec.map(big).join(' | ')])))
    if (r.pipelined.some(x => x.cappedAt)) out.push('   (cap N): koffi runs at most max_async_calls async calls at once and throws past it; those rows ran at the cap')
  }
  if (r.efficiency) {
    out.push(table('2b. Efficiency: CPU per call (all threads, and the child\'s for peers that have one) at a fixed rate, an open loop',
      ['subject', 'calls/s', 'CPU ns/call', '% of a core', '× koffi', 'over floor, × koffi', 'latency p50 µs', 'p99 µs', 'failed', 'rounds ns/call'],
      r.efficiency.map(x => [x.name, x.rate, x.cpuNsPerCall, fmt(x.cpuPctOfCore, 1), fmt(x.vsKoffi), fmt(x.overFloorVsKoffi), fmt(x.p50Us, 1), fmt(x.p99Us, 1), x.failed, x.roundNsPerCall.join(' ')])))
    out.push('   "over floor": CPU per call minus the timer loop\'s own (the floor row), over koffi\'s likewise; latency: issue to settle, at that rate')
  }
  if (r.reloadPeers) {
    const x = r.reloadPeers
    const row = (name, s, ratio) => [name, fmt(s.medianMs, 3), fmt(s.p90Ms, 3), fmt(s.maxMs, 3), ratio]
    const rows = [row('dlhost shadow reload(), idle', x.idle, '1.00'), row(`dlhost shadow reload(), ${x.underLoad.inFlight} calls in flight`, x.underLoad, fmt(x.underLoadOverIdle))]
    if (x.koffiByHand) rows.push(row('by hand with koffi (peer)', x.koffiByHand, fmt(x.idleOverKoffiByHand === 0 ? null : 1 / x.idleOverKoffiByHand)))
    out.push(table(`5b. Reload, start → new version answering (${x.swaps} swaps each, interleaved)`, ['subject', 'median ms', 'p90 ms', 'max ms', '× idle dlhost'], rows))
    out.push(`   under load: ${x.underLoad.callsDuring} calls answered during the swaps, ${x.underLoad.failed} failed`)
  }
  if (r.loader) {
    const l = r.loader
    out.push(table('8. Loader: one dlopen + dlclose cycle of the same library',
      ['subject', 'µs per cycle', '× raw C', 'rounds µs'],
      [['dlhost open({ pin: false }) + release()', fmt(l.dlhostUs, 1), fmt(l.vsRawC, 1), l.roundDlhostUs.map(v => fmt(v, 1)).join(' ')],
        ['raw C dlopen + dlclose loop (peer)', fmt(l.rawCUs, 1), '1.0', l.roundRawCUs.map(v => fmt(v, 1)).join(' ')]]))
  }
  if (r.twoway) {
    const tw = r.twoway
    out.push(table('9. Two-way plugins: messages from one plugin thread into JS (16 B, the plugin retries a refused one)',
      ['subject', 'messages/s', '× koffi', 'rounds'],
      tw.messages.map(x => [x.name, big(x.messagesPerSec), fmt(x.vsKoffi, 1), x.roundMessagesPerSec.map(big).join(' | ')])))
    out.push(table('   streamed answer (dlhost_task_send, 64 KiB chunks)',
      ['subject', 'GB/s', 'bytes per round', 'rounds GB/s'],
      tw.streams.map(x => [x.name, fmt(x.gbPerSec), big(x.bytesPerRound), x.roundGbPerSec.map(v => fmt(v)).join(' ')])))
    out.push(table('   reload with a state hand-over (1 MiB; calls held from the old version\'s drain to the new one\'s import)',
      ['calls in flight', 'pause ms', 'of it drain ms', 'hand-over ms', 'reload ms', 'swaps', 'failed calls'],
      tw.pause.map(x => [x.inFlight, fmt(x.pauseMsMedian, 3), fmt(x.drainMsMedian, 3), fmt(x.handoverMsMedian, 3), fmt(x.reloadMsMedian, 3), x.swaps, x.failedCalls])))
  }
  if (r.batch) {
    out.push(table('11. callBatch: items per second (64 B echo, host-driven)',
      ['subject', 'items/s', '× call()', '× Promise.resolve', 'rounds'],
      r.batch.map(x => [x.name, big(x.itemsPerSec), fmt(x.vsCall), fmt(x.vsCeiling), x.roundItemsPerSec.map(big).join(' | ')])))
  }
  if (r.rollout) {
    const ro = r.rollout
    out.push(table('10. Safe rollout: pipelined 1024 in flight with latency recording on and off',
      ['subject', 'calls/s', 'rounds'], ro.recording.map(x => [x.name, big(x.callsPerSec), x.roundCallsPerSec.map(big).join(' | ')])))
    out.push(`   on ÷ off, per round: Runtime ${fmt(ro.recordingOnOverOff.runtime * 100, 1)}%, Plugin ${fmt(ro.recordingOnOverOff.plugin * 100, 1)}%`)
    out.push(`   during a canary (${ro.canary.share * 100}% of calls to the new build, ${ro.canary.inFlight} in flight): ${big(ro.canary.canaryCallsPerSec)} calls/s, ${fmt(ro.canary.ratio * 100, 1)}% of the steady ${big(ro.canary.steadyCallsPerSec)}`)
    out.push(`   minCalls (${ro.decision.minCalls}) reached -> promoted: median ${fmt(ro.decision.medianMs, 3)} ms, max ${fmt(ro.decision.maxMs, 3)} ms over ${ro.decision.rounds} canaries`)
  }
  if (r.issueNsPerCall) {
    out.push(`   issuing a call (call(): submit + promise, no completion): ${Object.entries(r.issueNsPerCall).map(([k, v]) => `${k} ${v} ns`).join(', ')} of JS-thread time per call`)
  }
  if (r.callSync) {
    out.push(table('3. callSync, 64 B Buffer (tight loop)',
      ['subject', 'ns/call', '× N-API noop', '× N-API echoSync', 'koffi ÷', 'rounds ns'],
      r.callSync.map(x => [x.name, fmt(x.nsPerCall, 1), fmt(x.vsNoop), fmt(x.vsEchoSync), fmt(x.koffiOver), x.roundNs.map(v => fmt(v, 0)).join(' ')])))
  }
  if (r.napiBlocks) {
    out.push(table('   building blocks, JS thread (tight loop)', ['operation', 'ns'], r.napiBlocks.map(x => [x.name, fmt(x.ns, 1)])))
  }
  const spinTable = (title, rows) => {
    const abis = ['host', 'native'].filter(a => rows[0][a])
    const idle = rows[0].idleCpuPct !== undefined
    return table(title,
      ['setting (js / poller)', ...abis.flatMap(a => [`${a} med µs`, `${a} p99 µs`, `${a} × setImm`, `${a} busy CPU%`]), ...(idle ? ['idle CPU%'] : [])],
      rows.map(x => [x.setting, ...abis.flatMap(a => [fmt(x[a].medianUs), fmt(x[a].p99Us), fmt(x[a].vsSetImmediate), x[a].busyCpuPct]), ...(idle ? [fmt(x.idleCpuPct, 2)] : [])]))
  }
  if (r.spin) {
    out.push(spinTable('Spin knobs: setSpin(jsSpinNs, pollerSpinNs), sequential round trip (busy CPU: whole process, 100 = one core)', r.spin))
    if (r.spinBest) out.push(`best for host-driven latency: ${r.spinBest}`)
  }
  if (r.spinOneCpu) out.push(spinTable('Spin knobs, process pinned to ONE CPU (taskset -c 0): JS thread and poll thread share a core', r.spinOneCpu))
  if (r.reload) {
    const s = r.reload.strategies
    out.push(table(`4. Reload latency (reload() on a ${r.reload.soBytes}-byte host-driven plugin, ${r.reload.swaps} swaps)`,
      ['strategy', 'median ms', 'p90 ms', 'min ms', 'max ms', "'reload' ev ms", 'first call µs', 'old retired ms'],
      Object.entries(s).map(([k, x]) => [k, fmt(x.medianMs, 3), fmt(x.p90Ms, 3), fmt(x.minMs, 3), fmt(x.maxMs, 3), fmt(x.eventMedianMs, 3), fmt(x.firstCallUs, 1), fmt(x.retireMs, 3)])))
    const w = r.reload.watched
    if (w) {
      out.push(table(`   watched: file replaced (rename), settled after ${w.settleMs} ms, 'reload' event ms = settled → new version serving`,
        ['case', 'median ms', 'p90 ms', 'min ms', 'max ms', 'prepared', 'first call µs'],
        Object.entries(w.cases).map(([k, x]) => [k, fmt(x.medianMs, 3), fmt(x.p90Ms, 3), fmt(x.minMs, 3), fmt(x.maxMs, 3), x.prepared, fmt(x.firstCallUs, 1)])))
    }
    const b = r.reload.breakdown
    const st = b.snapshotSteps
    out.push(table('   breakdown (each timed alone, median ms)',
      ['step', 'ms', 'what'],
      [
        ['snapshot', fmt(b.snapshotMs, 3), 'CopyStore.snapshot: read + sha256 + write + fsync (threadpool) + read back + verify'],
        ['  read', fmt(st.readMs, 3), 'open + fstat + read + fstat + close (synchronous)'],
        ['  sha256', fmt(st.sha256Ms, 3), 'hash of the bytes'],
        ['  write', fmt(st.writeMs, 3), 'open O_EXCL + fchmod + write'],
        ['  fsync', fmt(st.fsyncMs, 3), 'fsync of the copy (here synchronous; a reload overlaps it with verify + load)'],
        ['  verify', fmt(st.verifyMs, 3), 'close + read back + sha256'],
        ['validate', fmt(b.validateMs, 3), 'parseElf + checkHostCompatible + detectAbi'],
        ['open()', fmt(b.openMs, 3), 'stat + realpath + facts (read, sha256, ELF) + dlopen'],
        ['release()', fmt(b.releaseMs, 3), 'dlclose + verify unmapped'],
        ['load()', fmt(b.loadMs, 3), 'open() + Runtime + poll thread + dlhost_open + init event'],
        ['load(), maxQueue 1024', fmt(b.loadSmallQueueMs, 3), 'the same with a 16 KiB request ring instead of 1 MiB'],
        ['unload()', fmt(b.unloadMs, 3), 'close queue, poll thread exits, dlclose, verify, event'],
        ['isMapped', fmt(b.isMappedMs, 3), 'dl_iterate_phdr by path'],
        ['remove copy', fmt(b.removeMs, 3), 'unlink'],
        ['lean prototype', fmt(b.leanMs, 3), 'sync read + sha256 + validate + write (no fsync/verify) + load(maxQueue 1024)'],
        ['shadow rest', fmt(b.shadowRestMs, 3), 'shadow median − snapshot − validate − load (negative: the steps overlap)'],
        ['drain rest', fmt(b.drainRestMs, 3), 'drain median − snapshot − validate − load − unload (negative: overlap)']
      ]))
  }
  if (r.storm) {
    const s = r.storm
    const row = (name, x, errors) => [name, big(x.steadyCallsPerSec), big(x.stormCallsPerSec), `${(x.ratio * 100).toFixed(1)}%`, x.roundRatios.map(v => fmt(v * 100, 0) + '%').join(' '), x.reloadsPerWindow.join(' '), x.failedCalls, errors]
    const rows = [row('dlhost plugin.call, shadow', s, s.reloadErrors)]
    if (s.koffiByHand) rows.push(row('koffi .async, by hand (drained unload)', s.koffiByHand, '-'))
    out.push(table(`5. Throughput during a reload storm (${s.inFlight} in flight, 10 reloads/s)`,
      ['subject', 'steady calls/s', 'storm calls/s', 'storm/steady', 'round ratios', 'reloads/window', 'failed calls', 'reload errors'], rows))
    if (s.koffiByHand) out.push(`   dlhost's storm throughput ÷ koffi's by-hand storm throughput, per round: ${fmt(s.stormOverKoffiStorm, 1)}×`)
  }
  if (r.memory) {
    const m = r.memory
    out.push(table(`6. Memory drift after a warm-up (MB; ${m.gc ? 'gc before each sample' : 'no gc: run with node --expose-gc'})`,
      ['after', 'RSS MB', 'JS heap MB', 'external MB'],
      [[`${m.loadUnload.cycles} load/call/unload cycles`, fmt(m.loadUnload.rssMb), fmt(m.loadUnload.heapMb), fmt(m.loadUnload.externalMb)],
        [`${m.reloads.reloads} shadow reloads`, fmt(m.reloads.rssMb), fmt(m.reloads.heapMb), fmt(m.reloads.externalMb)],
        [`${m.calls.calls} calls`, fmt(m.calls.rssMb), fmt(m.calls.heapMb), fmt(m.calls.externalMb)]]))
    out.push('   RSS moves ±5 MB from sample to sample here (glibc\'s per-thread arenas: every runtime has an owner and a poll thread); a leak shows in the JS heap and external columns, and as RSS that keeps growing over longer runs')
    if (m.perRuntime) out.push(`   RSS per loaded runtime: ${fmt(m.perRuntime.rssKb, 0)} KiB (${m.perRuntime.runtimes} runtimes); per call in flight: ${fmt(m.perCallInFlight.rssBytes, 0)} bytes (${m.perCallInFlight.calls} calls)`)
  }
  if (r.isolate) {
    const x = r.isolate
    out.push(table('7. Isolated runtimes (dlhost-host child, shared-memory channel), 64 B echo',
      ['subject', 'median µs', 'p99 µs', '× in-process'],
      x.sequential.map(s => [s.name, fmt(s.medianUs), fmt(s.p99Us), fmt(s.vsInProcess)])))
    out.push(table('   pipelined', ['subject', 'in flight', 'calls/s', '× in-process'],
      x.pipelined.map(p => [p.name, p.depth, big(p.callsPerSec), fmt(p.vsInProcess)])))
    out.push(table('   lifecycle', ['what', 'value'], [
      ['child start-up (load() → serving), median', `${fmt(x.startupMs)} ms`],
      ['RSS per child (dlhost-host)', `${x.childRssKb} KiB`],
      ['crash → serving again, median', `${fmt(x.crashToServingMs)} ms`],
      ['a node child using the addon: start-up', `${fmt(x.nodeChildStartupMs)} ms`],
      ['a node child using the addon: RSS', `${x.nodeChildRssKb} KiB`]
    ]))
  }
  const show = (v, t) => v === null ? '-' : t.unit === 'calls/s' ? big(v) : fmt(v, 2)
  out.push(table('Targets (measured = median over rounds; best = best single round, the quiet-machine estimate)', ['target', 'measured', 'best round', 'goal', 'met'],
    r.targets.map(t => [t.target, `${show(t.value, t)} ${t.unit}`, t.bestRound === null ? '-' : `${show(t.bestRound, t)} ${t.unit}`, `${t.goal} ${t.unit}`, t.met === null ? '-' : t.met ? 'yes' : 'NO'])))
  return out.join('\n') + '\n'
}

module.exports = { render, targets }
