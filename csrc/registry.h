// registry.h: the library registry (Level 1), dlopen/dlclose with explicit
// reference counts. Any thread.
//
// dlopen handles are process-wide, so the registry is one per process (all
// threads and all Node environments share it) and every method takes its
// mutex. Which *environment* holds which reference is tracked by the JS
// objects of that environment (library_wrap.cc, runtime_wrap.cc).
#pragma once

#include <sys/types.h>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "constants.h"
#include "owner_thread.h"

namespace dlhost {

// A failure: either a stable code (ERR_DLOPEN, ERR_STALE_PATH, ...) or an
// errno (sys_errno != 0, code empty), which lib/errors.ts maps to a code
// (its one errno mapper); and, when the loader produced one, its own message.
struct LoadError {
  std::string code;
  std::string message;
  std::string loader_message;
  int sys_errno = 0;
};

// What a library *is*: the file behind the real path at the time it was opened.
struct Identity {
  std::string real_path;
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  int64_t mtime_ns = 0;
  // "dev:ino:size:mtimeNs": the one place this format is written. With the
  // real path, the identity (lib/ reads it, never rebuilds it).
  std::string Key() const;
  // Reads the identity of the file at `path` (realpath, open, fstat). With
  // keep_fd, the descriptor is left open there (the caller closes it).
  // Throws LoadError (an errno, or ERR_NOT_ELF for a file that is not regular).
  static Identity Of(const std::string &path, int *keep_fd = nullptr);
};

// One identity in the registry. Fields are guarded by Registry::mu_.
struct LibEntry {
  uint64_t serial = 0;
  Identity id;
  void *handle = nullptr;  // null once dlclose'd (or never opened)
  uint64_t refs = 0;       // Library objects (open() calls not yet released)
  uint64_t runtimes = 0;   // runtimes inside it (held until their threads left)
  bool pinned = false;     // never dlclose'd; once set, never cleared
  bool global = false;
  bool dlclosed = false;  // dlclose ran; the entry stays only while still mapped
  // A runtime's plugin threads outlived its unload: the runtime's reference is
  // kept for ever (never unmapped under a running thread).
  bool threads_stuck = false;
  // The thread that dlopen'ed it, runs plugin init/close, and will dlclose
  // it (owner_thread.h); null once dlclose'd.
  std::shared_ptr<OwnerThread> owner;
};

using EntryPtr = std::shared_ptr<LibEntry>;

// The result of dropping a reference.
struct ReleaseResult {
  bool dlclosed = false;  // this release ran dlclose
  bool mapped = false;    // the object is still in the process afterwards
};

struct Row {
  uint64_t serial;
  Identity id;
  uint64_t refs, runtimes;
  bool pinned, mapped, dlclosed, threads_stuck;
};

class Registry {
 public:
  static Registry &Get();

  // Opens (or shares) the library at `path`; refs += 1. Throws LoadError.
  EntryPtr Open(const std::string &path, uint32_t flags);
  // Drops one open() reference; dlcloses when nothing holds it and unpinned.
  ReleaseResult Release(const EntryPtr &e);
  // A runtime enters / leaves the library (same closing rule as Release).
  void AcquireRuntime(const EntryPtr &e);
  ReleaseResult ReleaseRuntime(const EntryPtr &e);
  // Resolves a symbol while the library is open; nullptr otherwise.
  void *Symbol(const EntryPtr &e, const char *name);
  // Marks pinned (policy "once pinned, stays pinned").
  void Pin(const EntryPtr &e);
  // A runtime's plugin threads never left: its reference stays, say why.
  void MarkThreadsStuck(const EntryPtr &e);
  // Runs fn on the library's owner thread, waiting for it (Run) or not
  // (Post). Only while the caller holds a reference (the library is open).
  void RunOnOwner(const EntryPtr &e, const std::function<void()> &fn);
  void PostOnOwner(const EntryPtr &e, std::function<void()> fn);

  std::vector<Row> Snapshot();
  Row RowOf(const EntryPtr &e);

  // Process exit: the final dlclose of idle libraries on their owner threads.
  void AtExit();

  // Is an object loaded from exactly this path in the process? Asked of the
  // loader (dl_iterate_phdr), never inferred from an old pointer.
  static bool IsMapped(const std::string &path);

 private:
  Registry() = default;
  ReleaseResult MaybeClose(const EntryPtr &e);                // mu_ held
  EntryPtr TryOpen(const std::string &path, uint32_t flags);  // null: changed under dlopen
  std::mutex mu_;
  uint64_t next_serial_ = 1;
  std::unordered_map<std::string, EntryPtr> by_key_;
};

}  // namespace dlhost
