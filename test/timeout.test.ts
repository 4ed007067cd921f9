// call(req, { timeoutMs }): ERR_TIMEOUT at the deadline; in process the
// plugin may still finish, and that answer is dropped and counted.
import t from 'tap'
import { load } from '../lib/index'
import { fixture } from './lib/helpers'

t.test('a call past its timeout rejects ERR_TIMEOUT; the late answer is dropped and counted', async t => {
  const holder = await load(fixture('gate.so'), 'timeout-holder')
  const opener = await load(fixture('gate.so'), 'timeout-opener')
  t.teardown(async () => { await holder.unload(); await opener.unload() })
  const t0 = Date.now()
  await t.rejects(holder.call('hold', { timeoutMs: 50 }), { code: 'ERR_TIMEOUT' })
  t.ok(Date.now() - t0 >= 45, 'not before its time')
  t.equal((await opener.call('open')).toString(), 'ok', 'the held task is let go')
  // One poller, FIFO: once "after" is answered, the late answer came (and was dropped).
  t.equal((await holder.call('after')).toString(), 'after')
  t.equal(holder.stats.late, 1, 'the late answer was counted')
  t.equal(holder.stats.inFlight, 0, 'and its slot is free again')
  t.equal((await holder.call('fast', { timeoutMs: 5000 })).toString(), 'fast', 'an answer in time resolves')
  await t.rejects(holder.call('x', { timeoutMs: -1 }), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
  await t.rejects(holder.call('x', { timeoutMs: '5' as unknown as number }), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
})
