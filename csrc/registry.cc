// registry.cc: Level 1, refcounted dlopen/dlclose. Runs on any thread (JS
// threads of any environment, poll threads and reapers when runtimes leave);
// everything under mu_.
#include "registry.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

namespace dlhost {

namespace {

LoadError ErrnoError(const char *what, const std::string &path, int err) {
  return {"", std::string(what) + " '" + path + "': " + strerror(err), strerror(err), err};
}

struct MappedQuery {
  const std::string *path;
  bool found;
};

int FindByName(struct dl_phdr_info *info, size_t, void *data) {
  auto *q = static_cast<MappedQuery *>(data);
  if (info->dlpi_name && *q->path == info->dlpi_name) {
    q->found = true;
    return 1;
  }
  return 0;
}

int CollectNames(struct dl_phdr_info *info, size_t, void *data) {
  auto *names = static_cast<std::unordered_set<std::string> *>(data);
  if (info->dlpi_name && *info->dlpi_name) names->insert(info->dlpi_name);
  return 0;
}

// True when a mapping of `path` in /proc/self/maps is the inode we stat'ed.
// Used only when the path is already loaded, to tell "the same file" from "a
// file that replaced it" (glibc would hand back the old code for the latter).
bool MapsShowInode(const std::string &path, ino_t ino) {
  FILE *f = fopen("/proc/self/maps", "re");
  if (!f) return true;  // can't tell: don't invent a failure
  char *line = nullptr;
  size_t cap = 0;
  bool match = false;
  while (getline(&line, &cap, f) > 0) {
    char *p = strchr(line, '/');
    if (!p) continue;
    size_t n = strcspn(p, "\n");
    std::string name(p, n);
    const std::string deleted = " (deleted)";
    if (name.size() > deleted.size() &&
        name.compare(name.size() - deleted.size(), deleted.size(), deleted) == 0)
      name.resize(name.size() - deleted.size());
    if (name != path) continue;
    unsigned long long start, end, off, inode;
    char perms[8], dev[16];
    if (sscanf(line, "%llx-%llx %7s %llx %15s %llu", &start, &end, perms, &off, dev, &inode) == 6 &&
        inode == (unsigned long long)ino) {
      match = true;
      break;
    }
  }
  free(line);
  fclose(f);
  return match;
}

}  // namespace

std::string Identity::Key() const {
  return std::to_string(dev) + ':' + std::to_string(ino) + ':' + std::to_string(size) + ':' +
         std::to_string(mtime_ns);
}

static std::string MapKey(const Identity &id) { return id.real_path + '\0' + id.Key(); }

Identity Identity::Of(const std::string &path, int *keep_fd) {
  char real[PATH_MAX];
  if (!realpath(path.c_str(), real)) throw ErrnoError("cannot resolve", path, errno);
  // From a descriptor: open(), not access(), answers for what dlopen will
  // actually be allowed to do; and a caller that keeps it open keeps the
  // inode (its number cannot go to another file meanwhile).
  int fd = ::open(real, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw ErrnoError("cannot open", path, errno);
  struct stat st;
  int rc = fstat(fd, &st), err = errno;
  if (rc != 0 || !keep_fd || !S_ISREG(st.st_mode)) ::close(fd);
  if (rc != 0) throw ErrnoError("cannot stat", path, err);
  if (S_ISDIR(st.st_mode)) throw ErrnoError("cannot open", path, EISDIR);
  if (!S_ISREG(st.st_mode))
    throw LoadError{"ERR_NOT_ELF", "'" + path + "' is not a regular file", ""};
  if (keep_fd) *keep_fd = fd;
  Identity id;
  id.real_path = real;
  id.dev = st.st_dev;
  id.ino = st.st_ino;
  id.size = st.st_size;
  id.mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
  return id;
}

Registry &Registry::Get() {
  // Leaked on purpose: poll threads may still release references while the
  // process exits, after static destructors would have run.
  static Registry *r = [] {
    auto *reg = new Registry();
    // Registered after the loader's own handler, so it runs before glibc's
    // _dl_fini runs the destructors of what is still loaded.
    atexit([] { Get().AtExit(); });
    return reg;
  }();
  return *r;
}

// At process exit glibc runs the destructors of every library still loaded
// on the exiting thread. A library whose init made its owner thread the
// main thread of an embedded runtime (CPython's Py_Initialize) then waits
// for ever for that thread. So the final dlclose of every library no
// runtime is inside, pinned or not, runs here on its owner thread: its
// destructors run there, once. Runtimes that were closed by their
// environment's teardown get a bounded moment to leave first.
void Registry::AtExit() {
  std::unique_lock<std::mutex> lock(mu_);
  for (int i = 0; i < 100; i++) {
    bool busy = false;
    for (auto &kv : by_key_) busy = busy || (kv.second->handle && kv.second->runtimes);
    if (!busy) break;
    lock.unlock();
    usleep(10000);
    lock.lock();
  }
  for (auto &kv : by_key_) {
    LibEntry &e = *kv.second;
    if (!e.handle || e.runtimes || e.threads_stuck || !e.owner || e.owner->OnOwner()) continue;
    void *h = e.handle;
    std::shared_ptr<OwnerThread> owner = std::move(e.owner);
    owner->Finish([h] { dlclose(h); });
    e.handle = nullptr;
    e.dlclosed = true;
  }
}

bool Registry::IsMapped(const std::string &path) {
  MappedQuery q{&path, false};
  dl_iterate_phdr(FindByName, &q);
  return q.found;
}

EntryPtr Registry::Open(const std::string &path, uint32_t flags) {
  // A file renamed over the path between the stat and the dlopen would be
  // reported as the wrong version: look again (bounded).
  for (int attempt = 0;; attempt++) {
    if (EntryPtr e = TryOpen(path, flags)) return e;
    if (attempt == 2)
      throw LoadError{
          "ERR_STALE_PATH",
          "'" + path + "' kept changing while it was opened; try again once it is stable", ""};
  }
}

EntryPtr Registry::TryOpen(const std::string &path, uint32_t flags) {
  // The identity of a descriptor held open until the mapping is checked: a
  // file renamed over the path and deleted at once cannot hand its inode
  // number to another file meanwhile.
  int fd = -1;
  Identity id = Identity::Of(path, &fd);
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  const char *resolved = id.real_path.c_str();
  const std::string key = MapKey(id);

  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_key_.find(key);
  EntryPtr e = it == by_key_.end() ? nullptr : it->second;
  if (e && e->handle) {
    e->refs++;
    if (flags & kPin) e->pinned = true;
    if ((flags & kGlobal) && !e->global) {
      // Promote to RTLD_GLOBAL in place; drop the extra loader reference.
      if (void *h = dlopen(resolved, RTLD_NOLOAD | RTLD_NOW | RTLD_GLOBAL)) {
        dlclose(h);
        e->global = true;
      }
    }
    return e;
  }
  // The path is loaded but not as this identity: the file was replaced while
  // the old object is still mapped, and glibc would return the old code.
  if (IsMapped(id.real_path) && !MapsShowInode(id.real_path, id.ino))
    throw LoadError{"ERR_STALE_PATH",
                    "'" + path +
                        "' was replaced while the previous version is "
                        "still loaded, and glibc would return the old code",
                    ""};
  int mode = (flags & kLazy ? RTLD_LAZY : RTLD_NOW) | (flags & kGlobal ? RTLD_GLOBAL : RTLD_LOCAL);
  std::shared_ptr<OwnerThread> owner;
  try {
    owner = std::make_shared<OwnerThread>();
  } catch (const std::exception &ex) {
    throw LoadError{"ERR_RESOURCE", "cannot start a thread for '" + path + "': " + ex.what(),
                    ex.what()};
  }
  void *h = nullptr;
  std::string lm;
  // The library's constructors run on its owner thread, as its init will.
  owner->Run([&] {
    dlerror();
    h = dlopen(resolved, mode);
    if (!h) {
      const char *msg = dlerror();
      lm = msg ? msg : "unknown dlopen error";
    }
  });
  if (!h) {
    owner->Finish([] {});
    throw LoadError{"ERR_DLOPEN", "dlopen '" + path + "' failed: " + lm, lm};
  }
  // What was mapped must be the inode that was stat'ed (the identity, and
  // the facts lib/library.ts reads through a descriptor of it).
  if (!(flags & kPrivate) && !MapsShowInode(id.real_path, id.ino)) {
    owner->Finish([h] { dlclose(h); });
    return nullptr;
  }
  if (!e) {
    e = std::make_shared<LibEntry>();
    e->serial = next_serial_++;
    e->id = id;
    by_key_[key] = e;
  }
  // A stuck entry (dlclose'd but still mapped) comes back to life here.
  e->handle = h;
  e->owner = std::move(owner);
  e->dlclosed = false;
  e->refs = 1;
  e->pinned = e->pinned || (flags & kPin);
  e->global = flags & kGlobal;
  return e;
}

ReleaseResult Registry::MaybeClose(const EntryPtr &e) {
  ReleaseResult r;
  if (e->refs || e->runtimes || e->pinned || !e->handle) {
    r.mapped = IsMapped(e->id.real_path);
    return r;
  }
  void *h = e->handle;
  std::shared_ptr<OwnerThread> owner = std::move(e->owner);
  if (owner && !owner->OnOwner()) {
    // dlclose on the thread that opened it, then that thread exits (its
    // thread_local destructors run) before the unmapping is measured.
    owner->Finish([h] { dlclose(h); });
  } else {
    // Never reached: nothing releases a library from its own owner thread.
    dlclose(h);
  }
  e->handle = nullptr;
  e->dlclosed = true;
  r.dlclosed = true;
  r.mapped = IsMapped(e->id.real_path);
  // Gone for real: forget it. Still mapped: keep it as a stuck row.
  if (!r.mapped) {
    auto it = by_key_.find(MapKey(e->id));
    if (it != by_key_.end() && it->second == e) by_key_.erase(it);
  }
  return r;
}

ReleaseResult Registry::Release(const EntryPtr &e) {
  std::lock_guard<std::mutex> lock(mu_);
  if (e->refs) e->refs--;
  return MaybeClose(e);
}

void Registry::AcquireRuntime(const EntryPtr &e) {
  std::lock_guard<std::mutex> lock(mu_);
  e->runtimes++;
}

ReleaseResult Registry::ReleaseRuntime(const EntryPtr &e) {
  std::lock_guard<std::mutex> lock(mu_);
  if (e->runtimes) e->runtimes--;
  return MaybeClose(e);
}

void *Registry::Symbol(const EntryPtr &e, const char *name) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!e->handle) return nullptr;
  dlerror();
  return dlsym(e->handle, name);
}

void Registry::Pin(const EntryPtr &e) {
  std::lock_guard<std::mutex> lock(mu_);
  e->pinned = true;
}

void Registry::RunOnOwner(const EntryPtr &e, const std::function<void()> &fn) {
  std::shared_ptr<OwnerThread> owner;
  {
    std::lock_guard<std::mutex> lock(mu_);
    owner = e->owner;
  }
  if (owner)
    owner->Run(fn);
  else
    fn();
}

void Registry::PostOnOwner(const EntryPtr &e, std::function<void()> fn) {
  std::shared_ptr<OwnerThread> owner;
  {
    std::lock_guard<std::mutex> lock(mu_);
    owner = e->owner;
  }
  if (owner)
    owner->Post(std::move(fn));
  else
    fn();
}

void Registry::MarkThreadsStuck(const EntryPtr &e) {
  std::lock_guard<std::mutex> lock(mu_);
  e->threads_stuck = true;
}

Row Registry::RowOf(const EntryPtr &e) {
  std::lock_guard<std::mutex> lock(mu_);
  bool mapped = IsMapped(e->id.real_path);
  return Row{e->serial, e->id,  e->refs,     e->runtimes,
             e->pinned, mapped, e->dlclosed, e->threads_stuck};
}

std::vector<Row> Registry::Snapshot() {
  std::lock_guard<std::mutex> lock(mu_);
  std::unordered_set<std::string> names;
  dl_iterate_phdr(CollectNames, &names);
  std::vector<Row> rows;
  for (auto it = by_key_.begin(); it != by_key_.end();) {
    const EntryPtr &e = it->second;
    bool mapped = names.count(e->id.real_path) > 0;
    // A stuck entry that has since left (its blocking thread exited) is dropped.
    if (!mapped && !e->handle) {
      it = by_key_.erase(it);
      continue;
    }
    rows.push_back(Row{e->serial, e->id, e->refs, e->runtimes, e->pinned, mapped, e->dlclosed,
                       e->threads_stuck});
    ++it;
  }
  return rows;
}

}  // namespace dlhost
