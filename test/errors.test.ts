// errors.ts: the one table of codes, the one errno mapping, native errors.
import t from 'tap'
import fs from 'fs'
import path from 'path'
import { codes, DlhostError, errnoError, fromNative, notRegularError, pluginError, previewDetail } from '../lib/errors'
import { copyOf, examples, root, runNode } from './lib/helpers'

t.test('every code the C++ side can throw is in the TypeScript table', async t => {
  const dir = path.join(root, 'csrc')
  const thrown = new Set<string>()
  for (const f of fs.readdirSync(dir)) {
    if (!/\.(cc|h)$/.test(f)) continue
    for (const m of fs.readFileSync(path.join(dir, f), 'utf8').matchAll(/"(ERR_[A-Z_]+)"/g)) thrown.add(m[1])
  }
  t.ok(thrown.size >= 5, `found the native codes (${[...thrown].join(', ')})`)
  // The argument-error codes go on TypeError/RangeError, as Node's own do.
  for (const c of thrown) {
    if (c === 'ERR_INVALID_ARG_TYPE' || c === 'ERR_OUT_OF_RANGE') continue
    t.ok(Object.prototype.hasOwnProperty.call(codes, c), `${c} is a known code`)
  }
})

t.test('an unknown native code is ERR_INTERNAL, never dropped', async t => {
  const e = fromNative(Object.assign(new Error('boom'), { code: 'ERR_NOPE' }), '/x.so') as DlhostError
  t.type(e, DlhostError)
  t.equal(e.code, 'ERR_INTERNAL')
  t.match(e.message, /ERR_NOPE/)
  t.equal(e.path, '/x.so')
  const k = fromNative(Object.assign(new Error('gone'), { code: 'ERR_RELEASED' })) as DlhostError
  t.equal(k.code, 'ERR_RELEASED')
  const plain = new TypeError('x')
  t.equal(fromNative(plain), plain, 'an uncoded native TypeError stays what it is')
})

t.test('one errno mapping for every layer', async t => {
  const cases: Array<[string, string]> = [
    ['ENOENT', 'ERR_NOT_FOUND'], ['ENOTDIR', 'ERR_NOT_FOUND'], ['ELOOP', 'ERR_NOT_FOUND'], ['ENAMETOOLONG', 'ERR_NOT_FOUND'],
    ['EISDIR', 'ERR_IS_DIRECTORY'], ['EACCES', 'ERR_ACCESS'], ['EPERM', 'ERR_ACCESS'], ['EMFILE', 'ERR_ACCESS']
  ]
  for (const [errno, code] of cases) {
    t.equal(errnoError(Object.assign(new Error(errno), { code: errno }), '/p').code, code, `fs error ${errno}`)
    t.equal((fromNative(Object.assign(new Error(errno), { errnoCode: errno }), '/p') as DlhostError).code, code, `native errno ${errno}`)
  }
  t.equal(errnoError(Object.assign(new Error('x'), { code: 'ENOSPC' }), '/p', 'ERR_COPY').code, 'ERR_COPY', 'the fallback for the rest')
  t.match(notRegularError('/dev/null'), { code: 'ERR_NOT_ELF', reason: 'not a regular file' })
})

t.test("ERR_PLUGIN's message: the path, the rc, and the detail as text or as a short hex preview", async t => {
  t.equal(pluginError('/p/lib.so', 7, Buffer.from('bad cfg: "x"')).message, '/p/lib.so: the plugin returned rc 7: "bad cfg: \\"x\\""')
  t.equal(previewDetail(Buffer.alloc(0)), 'no detail')
  t.equal(previewDetail(Buffer.from('naïve ✓')), '"naïve ✓"', 'UTF-8 text')
  t.equal(previewDetail(Buffer.from([0, 1, 0xff, 0x10])), '<00 01 ff 10> (4 bytes)', 'binary: hex')
  t.equal(previewDetail(Buffer.from('ok\x01')), '<6f 6b 01> (3 bytes)', 'a control character makes it binary')
  t.match(previewDetail(Buffer.alloc(100, 0xfe)), /^<(fe ){31}fe …> \(100 bytes\)$/, 'at most 32 bytes shown')
  const long = previewDetail(Buffer.from('x'.repeat(1000)))
  t.match(long, /^"x{160}" … \(1000 bytes\)$/, 'long text is cut')
  const cut = Buffer.concat([Buffer.from('y'.repeat(639)), Buffer.from('é')]) // é straddles the 640-byte window
  t.match(previewDetail(cut), /^"y{160}" … \(641 bytes\)$/)
})

t.test('DLHOST_CALL_SITES=1: a rejected call carries the stack of the caller', async t => {
  const so = copyOf(`${examples}/libecho_native.so`, t.testdir())
  const src = (iso: boolean): string => `const d = require(${JSON.stringify(root)} + '/dist')
    async function theCallerFrame (rt) { return await rt.call('fail:3') }
    d.load(${JSON.stringify(so)}, '', ${iso ? "{ isolate: 'process' }" : '{ pin: false }'}).then(async rt => {
      const e = await theCallerFrame(rt).catch(e => e)
      console.log(JSON.stringify({ code: e.code, stack: e.stack }))
      await rt.unload()
    })`
  for (const iso of [false, true]) {
    const on = runNode(src(iso), { env: { ...process.env, DLHOST_CALL_SITES: '1' } })
    t.equal(on.status, 0, on.stderr)
    const { code, stack } = JSON.parse(on.stdout) as { code: string, stack: string }
    t.equal(code, 'ERR_PLUGIN')
    const frames = stack.split('\n').filter(l => l.trim().startsWith('at '))
    t.match(frames[0], /theCallerFrame/, `${iso ? 'isolated' : 'in process'}: the first frame is the caller's`)
    t.notOk(frames.some(f => /dist\/(isolate\/)?runtime\.js/.test(f)), 'no frame inside dlhost')
    t.match(stack, /^DlhostError: .*the plugin returned rc 3/, 'the message is kept')
    const off = runNode(src(iso))
    t.notMatch((JSON.parse(off.stdout) as { stack: string }).stack.split('\n')[1], /theCallerFrame/, 'off by default')
  }
})
