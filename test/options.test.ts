import t from 'tap'
import path from 'path'
import { inspect, load, open, reloadable } from '../lib/index'
import { closest } from '../lib/options'
import { openStoreCount } from '../lib/reload/copies'
import { copyOf, examples } from './lib/helpers'

const echo = (dir: string): string => copyOf(path.join(examples, 'libecho_native.so'), dir)

t.test('closest(): a near miss is named, a far one is not', async t => {
  t.equal(closest('settelMs', ['settleMs', 'strategy', 'watch']), 'settleMs')
  t.equal(closest('timeout', ['signal', 'timeoutMs']), 'timeoutMs')
  t.equal(closest('PIN', ['pin', 'global']), 'pin')
  t.equal(closest('zzzzzzzz', ['pin', 'global']), null)
})

t.test('an unknown key in any options object: TypeError ERR_INVALID_ARG naming the key and the closest known one', async t => {
  const dir = t.testdir()
  const so = echo(dir)
  t.throws(() => open(so, { pinn: true } as never), { name: 'TypeError', code: 'ERR_INVALID_ARG', message: /"pinn" in open\(\) options; did you mean "pin"/ })
  t.throws(() => open(so, { trust: { uid: [0] } } as never), { code: 'ERR_INVALID_ARG', message: /"uid" in options\.trust; did you mean "uids"/ })
  await t.rejects(load(so, '', { maxQeue: 3 } as never), { name: 'TypeError', code: 'ERR_INVALID_ARG', message: /did you mean "maxQueue"/ })
  await t.rejects(load(so, '', { isolate: 'process', limits: { memoryMB: 64 } } as never), { code: 'ERR_INVALID_ARG', message: /"memoryMB" in options\.limits; did you mean "memoryMb"/ })
  await t.rejects(load(so, '', { isolate: 'process', limits: { memoryMb: -1 } }), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' })
  await t.rejects(load(so, '', { isolate: 'process', limits: { cpuSeconds: '2' } } as never), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
  const stores = openStoreCount()
  // The example: a typo beside a valid key is not accepted silently.
  await t.rejects(reloadable(so, '', { settelMs: 5, isolate: 'process' } as never), { code: 'ERR_INVALID_ARG', message: /"settelMs" in reloadable\(\) options; did you mean "settleMs"/ })
  await t.rejects(reloadable(so, '', { watch: { pol: 10 } } as never), { code: 'ERR_INVALID_ARG', message: /"pol" in options\.watch; did you mean "poll"/ })
  await t.rejects(reloadable(so, '', { frobnicate: 1 } as never), { code: 'ERR_INVALID_ARG', message: /known keys: strategy, watch/ })
  t.equal(openStoreCount(), stores, 'a refused reloadable() made no copy store')
  // Nothing was loaded by the refused calls.
  const lib = open(so, { pin: false })
  t.equal(lib.refs, 1, 'no reference left behind')
  lib.release()

  const rt = await load(so, '', { pin: false })
  t.teardown(() => rt.unload())
  await t.rejects(rt.call('x', { timeout: 5 } as never), { code: 'ERR_INVALID_ARG', message: /did you mean "timeoutMs"/ })
  t.same(rt.stats.inFlight, 0, 'the refused call took no slot')
  t.equal((await rt.call('x', { timeoutMs: 1000 })).toString(), 'x', 'a known key still works')

  const iso = await load(so, '', { isolate: 'process' })
  t.teardown(() => iso.unload())
  await t.rejects(iso.call('x', { signa: AbortSignal.timeout(10) } as never), { code: 'ERR_INVALID_ARG', message: /did you mean "signal"/ })
  await t.rejects(iso.call('x', { timeoutMs: -1 }), { code: 'ERR_OUT_OF_RANGE' })

  const p = await reloadable(so, '', { watch: false })
  t.teardown(() => p.close())
  await t.rejects(p.call('x', { timeoutMS: 5 } as never), { code: 'ERR_INVALID_ARG', message: /did you mean "timeoutMs"/ })
})

t.test('an empty path is the same kind of error everywhere: TypeError ERR_INVALID_ARG', async t => {
  const kind = { name: 'TypeError', code: 'ERR_INVALID_ARG', message: /path must not be empty/ }
  t.throws(() => open(''), kind)
  await t.rejects(inspect(''), kind)
  await t.rejects(load(''), kind)
  await t.rejects(reloadable(''), kind)
  t.throws(() => open('a\0b'), { name: 'TypeError', code: 'ERR_INVALID_ARG' })
  await t.rejects(inspect('a\0b'), { name: 'TypeError', code: 'ERR_INVALID_ARG' })
  t.throws(() => open(7 as never), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
  await t.rejects(inspect(7 as never), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' })
})
