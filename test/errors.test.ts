// errors.ts: the one table of codes, the one errno mapping, native errors.
import t from 'tap'
import fs from 'fs'
import path from 'path'
import { codes, DlhostError, errnoError, fromNative, notRegularError } from '../lib/errors'
import { root } from './lib/helpers'

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
