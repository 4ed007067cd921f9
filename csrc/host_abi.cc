// host_abi.cc: the host ABI exported to plugins (dlhost.h). Plugin threads.
// These are the only symbols the addon exports (-fvisibility=hidden).
#include <climits>
#include <cstring>

#include "include/dlhost.h"
#include "runtime_core.h"

using dlhost::Task;

extern "C" {

DLHOST_EXPORT unsigned dlhost_abi_version(void) { return DLHOST_ABI_VERSION; }

// A queue whose runtime ended has no core: the end, again.
static dlhost::RuntimeCore *CoreOf(void *q) {
  return q ? static_cast<dlhost_queue *>(q)->core.load(std::memory_order_acquire) : nullptr;
}

DLHOST_EXPORT dlhost_task *dlhost_task_poll(dlhost_queue *q) {
  dlhost::RuntimeCore *c = CoreOf(q);
  return c ? reinterpret_cast<dlhost_task *>(c->Poll()) : nullptr;
}

DLHOST_EXPORT size_t dlhost_task_poll_batch(dlhost_queue *q, dlhost_task **out, size_t max) {
  dlhost::RuntimeCore *c = CoreOf(q);
  return c ? c->PollBatch(reinterpret_cast<Task **>(out), max) : 0;
}

DLHOST_EXPORT int dlhost_emit(dlhost_queue *q, const void *data, size_t len) {
  return dlhost::RuntimeCore::Emit(q, data, len);
}

DLHOST_EXPORT const void *dlhost_task_request(dlhost_task *t, size_t *len) {
  auto *task = reinterpret_cast<Task *>(t);
  if (!task || task->magic != Task::kMagic) {
    if (len) *len = 0;
    return nullptr;
  }
  if (len) *len = task->req_len;
  return task->req;
}

DLHOST_EXPORT void dlhost_task_respond(dlhost_task *t, int rc, void *rsp, size_t len) {
  dlhost::RuntimeCore::Respond(reinterpret_cast<Task *>(t), rc, rsp, len);
}

DLHOST_EXPORT int dlhost_task_send(dlhost_task *t, const void *data, size_t len) {
  return dlhost::RuntimeCore::Send(reinterpret_cast<Task *>(t), data, len);
}

DLHOST_EXPORT int dlhost_task_writable(dlhost_task *t) {
  return dlhost::RuntimeCore::Writable(reinterpret_cast<Task *>(t)) ? 1 : 0;
}

DLHOST_EXPORT int dlhost_task_cancelled(dlhost_task *t) {
  auto *task = reinterpret_cast<Task *>(t);
  if (!task || task->magic != Task::kMagic) return 0;
  return task->cancelled.load(std::memory_order_acquire) ||
                 task->core->readers_gone.load(std::memory_order_acquire)
             ? 1
             : 0;
}

DLHOST_EXPORT void *ngx_http_lua_ffi_task_poll(void *tq) {
  dlhost::RuntimeCore *c = CoreOf(tq);
  return c ? c->Poll() : nullptr;
}

DLHOST_EXPORT char *ngx_http_lua_ffi_get_req(void *tsk, int *len) {
  auto *task = static_cast<Task *>(tsk);
  if (!task || task->magic != Task::kMagic) {
    if (len) *len = 0;
    return nullptr;
  }
  if (len) *len = task->req_len > size_t(INT_MAX) ? INT_MAX : int(task->req_len);
  return task->req;
}

DLHOST_EXPORT void ngx_http_lua_ffi_respond(void *tsk, int rc, char *rsp, int rsp_len) {
  size_t len = rsp_len > 0 ? size_t(rsp_len) : (rsp ? strlen(rsp) : 0);
  dlhost::RuntimeCore::Respond(static_cast<Task *>(tsk), rc, rsp, len);
}

}  // extern "C"
