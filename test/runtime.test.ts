// Level 2 runtimes, per ABI: correctness under load, payload edge cases,
// plugin errors, init failures, entry symbols, cfg, runtime identity,
// callSync, bad arguments. Unload, queue limits and threads are in
// runtime-unload, runtime-flow and runtime-process.
import t from 'tap'
import fs from 'fs'
import path from 'path'
import { load, DlhostError } from '../lib/index'
import type { Abi } from '../lib/index'
import { copyOf, examples, fixture, inMaps } from './lib/helpers'

interface Plugin { so: string, abi: Abi, label: string }
const plugins: Plugin[] = [
  { so: 'libecho_host.so', abi: 'host', label: 'host-driven (C)' },
  { so: 'libecho_native.so', abi: 'native', label: 'native C pool, batch polling' },
  { so: 'libecho_cxx.so', abi: 'native', label: 'C++ (-fno-gnu-unique)' },
  { so: 'libecho_rust.so', abi: 'native', label: 'Rust' },
  { so: 'libffi_echo.so', abi: 'lua-resty-ffi', label: 'lua-resty-ffi' }
]

/** Request i: unique, variable length, some with bytes of every value. */
function request (i: number): Buffer {
  const head = Buffer.from(`req-${i}-`)
  if (i % 7 === 0) {
    const bin = Buffer.alloc(1 + (i % 300))
    for (let k = 0; k < bin.length; k++) bin[k] = (i + k * 31) & 0xff // includes 0x00
    return Buffer.concat([head, bin])
  }
  return Buffer.concat([head, Buffer.alloc(i % 150, 'x')])
}

for (const p of plugins) {
  const src = path.join(examples, p.so)
  t.test(`${p.label} (${p.so})`, { skip: fs.existsSync(src) ? false : `${src} not built` }, async t => {
    const so = copyOf(src, t.testdir())
    const rt = await load(so, 'cfg-1', { pin: false })
    t.teardown(() => rt.unload())
    t.equal(rt.abi, p.abi, 'runtime.abi')
    t.equal(rt.state, 'running')

    t.test('20 000 concurrent calls, each answered with its own response', async t => {
      const n = 20000
      const reqs = Array.from({ length: n }, (_, i) => request(i))
      const rsps = await Promise.all(reqs.map(r => rt.call(r)))
      let wrong = 0
      for (let i = 0; i < n; i++) if (!rsps[i].equals(reqs[i])) wrong++
      t.equal(wrong, 0, 'no response went to another call or was altered')
      // Strings too, interleaved with Buffers.
      const strs = await Promise.all(Array.from({ length: 2000 }, (_, i) => rt.call(`s${i}é`)))
      t.ok(strs.every((b, i) => b.toString() === `s${i}é`), 'string requests are sent as UTF-8')
    })

    t.test('binary payloads with NUL bytes, empty request, views into larger buffers', async t => {
      const bin = Buffer.from([0, 0, 1, 0, 255, 0, 10, 0])
      t.same(await rt.call(bin), bin)
      t.same(await rt.call(Buffer.from([0])), Buffer.from([0]), 'a single NUL byte')
      const empty = await rt.call('')
      t.ok(Buffer.isBuffer(empty))
      t.equal(empty.length, 0, 'empty request (string) -> empty Buffer')
      t.equal((await rt.call(Buffer.alloc(0))).length, 0, 'empty request (Buffer) -> empty Buffer')
      const backing = Buffer.from('0123456789abcdef')
      const view = new Uint8Array(backing.buffer, backing.byteOffset + 3, 5)
      t.equal((await rt.call(view)).toString(), '34567', 'a Uint8Array view sends only its own bytes')
    })

    t.test('an 8 MiB payload is echoed byte-exact', async t => {
      const big = Buffer.alloc(8 * 1024 * 1024)
      for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i)
      const out = await rt.call(big)
      t.equal(out.length, big.length)
      t.ok(out.equals(big), 'byte-exact')
    })

    t.test('rc != 0 rejects with ERR_PLUGIN, rc and the body as detail', async t => {
      const err = await rt.call('fail:42').then(() => null, (e: unknown) => e)
      t.ok(err instanceof DlhostError, 'a DlhostError')
      const e = err as DlhostError
      t.equal(e.code, 'ERR_PLUGIN')
      t.equal(e.rc, 42)
      t.ok(Buffer.isBuffer(e.detail))
      t.equal(e.detail?.toString(), 'failed')
      t.equal(e.path, so)
      t.equal(e.message, `${so}: the plugin returned rc 42: "failed"`, 'the message says where, the rc and the detail')
      await t.rejects(rt.call('fail:-3'), { code: 'ERR_PLUGIN', rc: -3 }, 'negative rc')
      t.equal((await rt.call('after-failure')).toString(), 'after-failure', 'the runtime keeps serving')
    })

    t.test('init failure: ERR_INIT_FAILED with rc, and the library is released', async t => {
      const other = copyOf(src, t.testdir())
      const err = await load(other, 'fail-init', { pin: false }).then(() => null, (e: unknown) => e)
      t.ok(err instanceof DlhostError)
      t.equal((err as DlhostError).code, 'ERR_INIT_FAILED')
      if (p.abi !== 'host') t.equal((err as DlhostError).rc, 7, 'the rc init returned')
      // dlhost_open returns a pointer, not an rc: NULL is said as such, no rc is invented.
      else t.match(err, { rc: undefined, message: /dlhost_open returned NULL/ })
      t.notOk(inMaps(other), 'unpinned library unmapped once load() rejected')
      // A later load of the same file with a good cfg works.
      const ok = await load(other, 'good', { pin: false })
      t.equal((await ok.call('cfg')).toString(), 'good')
      await ok.unload()
      t.notOk(inMaps(other))
    })

    t.test('cfg as string, Buffer and object reaches the plugin', async t => {
      const str = await load(so, 'a string cfg', { pin: false })
      t.equal((await str.call('cfg')).toString(), 'a string cfg')
      // lua-resty-ffi hands the plugin a C string: no NUL bytes in its cfg.
      const bytes = p.abi === 'lua-resty-ffi' ? Buffer.from([1, 2, 200, 255, 65]) : Buffer.from([1, 0, 2, 0, 255])
      const buf = await load(so, bytes, { pin: false })
      t.same(await buf.call('cfg'), bytes, 'Buffer cfg, byte for byte')
      const obj = { threads: 3, name: 'x', nested: { a: [1, 2] } }
      const json = await load(so, obj, { pin: false })
      t.same(JSON.parse((await json.call('cfg')).toString()), obj, 'object cfg arrives as JSON')
      const none = await load(so, undefined, { pin: false })
      t.equal((await none.call('cfg')).length, 0, 'no cfg -> empty')
      t.equal(new Set([rt, str, buf, json, none]).size, 5, 'five cfgs, five runtimes')
      await Promise.all([str.unload(), buf.unload(), json.unload(), none.unload()])
    })

    t.test('callSync', async t => {
      if (p.abi === 'host') {
        t.equal(rt.callSync('sync!').toString(), 'sync!')
        const bin = Buffer.from([0, 1, 0, 2])
        t.same(rt.callSync(bin), bin)
        t.equal(rt.callSync('').length, 0)
        t.throws(() => rt.callSync('fail:5'), { code: 'ERR_PLUGIN', rc: 5, name: 'DlhostError' })
        try { rt.callSync('fail:6') } catch (e) {
          t.ok(e instanceof DlhostError)
          t.equal((e as DlhostError).detail?.toString(), 'failed', 'detail')
        }
      } else {
        t.throws(() => rt.callSync('x'), { code: 'ERR_NOT_SYNC' })
      }
    })
  })
}

t.test('lua-resty-ffi: a C-string answer (rsp_len 0) and no body (rsp NULL)', async t => {
  const rt = await load(copyOf(path.join(examples, 'libffi_echo.so'), t.testdir()), 'lua', { pin: false })
  const v = await rt.call('version')
  t.equal(v.toString(), '1', 'rsp_len 0: the host took strlen(rsp)')
  const nobody = await rt.call('nobody')
  t.ok(Buffer.isBuffer(nobody))
  t.equal(nobody.length, 0, 'rsp NULL -> empty Buffer')
  await rt.unload()
})

t.test('entry symbols', async t => {
  const dir = t.testdir()
  await t.rejects(load(copyOf(fixture('plain.so'), dir), 'x', { pin: false }), { code: 'ERR_SYMBOL_MISSING', name: 'DlhostError' }, 'a library with no entry symbol')
  const host = copyOf(path.join(examples, 'libecho_host.so'), dir)
  await t.rejects(load(host, 'x', { pin: false, entry: 'native' }), { code: 'ERR_SYMBOL_MISSING' }, 'entry: native on a host-driven library')
  await t.rejects(load(host, 'x', { pin: false, entry: 'lua-resty-ffi' }), { code: 'ERR_SYMBOL_MISSING' }, 'entry: lua-resty-ffi on a host-driven library')
  const native = copyOf(path.join(examples, 'libecho_native.so'), dir)
  await t.rejects(load(native, 'x', { pin: false, entry: 'host' }), { code: 'ERR_SYMBOL_MISSING' }, 'entry: host on a plugin-driven library')
  t.notOk(inMaps(host), 'failed loads leave nothing mapped')
  t.notOk(inMaps(native))
  // A library with two entries: detection prefers dlhost_init; entry picks.
  const both = copyOf(fixture('misuse.so'), dir)
  const a = await load(both, 'a', { pin: false })
  t.equal(a.abi, 'native', 'dlhost_init wins detection')
  const b = await load(both, 'b', { pin: false, entry: 'host' })
  t.equal(b.abi, 'host', 'entry forces the host-driven ABI')
  t.equal(b.callSync('hi').toString(), 'hi')
  await Promise.all([a.unload(), b.unload()])
  t.notOk(inMaps(both))
})

t.test('one runtime per (identity, cfg)', async t => {
  const dir = t.testdir()
  const so = copyOf(path.join(examples, 'libecho_native.so'), dir)
  const a = await load(so, 'same', { pin: false })
  const b = await load(so, 'same', { pin: false })
  t.equal(a, b, 'same identity and cfg: the same Runtime object')
  const [c, d] = await Promise.all([load(so, 'concurrent', { pin: false }), load(so, 'concurrent', { pin: false })])
  t.equal(c, d, 'two concurrent loads share one runtime')
  t.equal(await load(so, Buffer.from('same'), { pin: false }), a, 'cfg identity is its bytes: string and Buffer alike')
  fs.symlinkSync(so, path.join(dir, 'link.so'))
  t.equal(await load(path.join(dir, 'link.so'), 'same', { pin: false }), a, 'through a symlink: the same identity')
  await a.call('count')
  t.equal((await b.call('count')).toString(), '2', 'they share one plugin state')
  const other = await load(so, 'different', { pin: false })
  t.not(other, a, 'a different cfg: a different runtime')
  t.equal((await other.call('count')).toString(), '1', 'with its own state')
  await a.unload()
  const fresh = await load(so, 'same', { pin: false })
  t.not(fresh, a, 'after unload: a fresh runtime')
  t.equal(fresh.state, 'running')
  t.equal((await fresh.call('count')).toString(), '1')
  await t.rejects(a.call('x'), { code: 'ERR_RUNTIME_UNLOADED' }, 'the old one stays unloaded')
  await Promise.all([fresh.unload(), other.unload(), c.unload()])
  t.notOk(inMaps(so))
})

t.test('callSync after unload: ERR_RUNTIME_UNLOADED', async t => {
  const rt = await load(copyOf(path.join(examples, 'libecho_host.so'), t.testdir()), 's', { pin: false })
  t.equal(rt.callSync('x').toString(), 'x')
  const u = rt.unload()
  t.throws(() => rt.callSync('x'), { code: 'ERR_RUNTIME_UNLOADED' }, 'while unloading')
  await u
  t.throws(() => rt.callSync('x'), { code: 'ERR_RUNTIME_UNLOADED' }, 'unloaded')
})

t.test('bad arguments: TypeError / RangeError with a code, no crash', async t => {
  const dir = t.testdir()
  const so = copyOf(path.join(examples, 'libecho_host.so'), dir)
  const rt = await load(so, 'args', { pin: false })
  for (const bad of [42, null, undefined, {}, [1, 2], new ArrayBuffer(4), Symbol('x')]) {
    await t.rejects(rt.call(bad as unknown as string), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, `call(${String(typeof bad)})`)
    t.throws(() => rt.callSync(bad as unknown as string), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, `callSync(${String(typeof bad)})`)
  }
  t.equal(rt.stats.inFlight, 0, 'nothing was submitted')
  await t.rejects(load(so, 'q', { pin: false, maxQueue: 0 }), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }, 'maxQueue 0')
  await t.rejects(load(so, 'q', { pin: false, maxQueue: -1 }), RangeError, 'maxQueue -1')
  await t.rejects(load(so, 'q', { pin: false, maxQueue: 1.5 }), TypeError, 'maxQueue 1.5')
  await t.rejects(load(so, 'q', { pin: false, maxQueue: '8' as unknown as number }), TypeError, 'maxQueue as a string')
  for (const cfg of [42, true, Symbol('c'), () => 1, 10n]) {
    await t.rejects(load(so, cfg as unknown as string, { pin: false }), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, `cfg of type ${typeof cfg}`)
  }
  await t.rejects(load(42 as unknown as string), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }, 'path of the wrong type')
  await t.rejects(load(so, 'e', { pin: false, entry: 'cobol' as unknown as Abi }), { name: 'TypeError' }, 'unknown entry')
  await t.rejects(load(so, 'o', null as unknown as object), { name: 'TypeError' }, 'options null')
  await t.rejects(load(path.join(dir, 'missing.so')), { code: 'ERR_NOT_FOUND' })
  t.equal((await rt.call('still fine')).toString(), 'still fine')
  await rt.unload()
  t.notOk(inMaps(so), 'the failed loads took no reference')
})
