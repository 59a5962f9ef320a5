/*
 * A direct start in one call that lets the GIL go once: open the unit's two log
 * files, posix_spawn the command, open its pidfd and wait for /proc to show its argv.
 *
 * The same steps in Python (_spawn.spawn_direct's fallback, used where this was not
 * compiled) let the GIL go at a dozen system calls per start, and in a burst every one
 * of those hand-offs waits on the event loop's thread: that, not the calls, was most
 * of a spawn thread's time. Built only where a C compiler is found at install time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define LOG_FLAGS (O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC)
#define LOG_MODE 0640
/* /proc/PID/stat fields (proc_pid_stat(5)): start time in clock ticks, and env_end. */
#define FIELD_START_TICKS 22
#define FIELD_ENV_END 51

/* A new session, every catchable signal at its default action, none blocked: shared by every start. */
static posix_spawnattr_t spawn_attributes;

/* A log file at a descriptor >= 3 (one below would be clobbered by the dup2s onto 0..2), or -1. */
static int open_log(const char *path)
{
    int fd = open(path, LOG_FLAGS, LOG_MODE);
    if (fd >= 0 && fd < 3) {
        int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        int saved = errno;
        close(fd);
        errno = saved;
        fd = moved;
    }
    return fd;
}

/* A small /proc file, NUL-terminated; its length, or -1 with errno set. */
static ssize_t read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, size - 1);
    int saved = errno;
    close(fd);
    errno = saved;
    if (n >= 0)
        buf[n] = '\0';
    return n;
}

/*
 * The child's start ticks, once an exec has laid out its argv (as pin_child in _spawn.py):
 * posix_spawn returns past the exec's point of no return, a moment before /proc shows the
 * new argv. 0, or -1 with errno set.
 */
static int pin(pid_t pid, unsigned long long *start_ticks)
{
    char path[64], buf[4096];
    long delay_ns = 50000;
    for (;;) {
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        if (read_small(path, buf, sizeof buf) < 0)
            return -1;
        /* comm (field 2) may hold spaces and parentheses: field 3 starts past the last ")". */
        char *rest = strrchr(buf, ')');
        if (rest == NULL || rest[1] == '\0') {
            errno = EPROTO;
            return -1;
        }
        char state = rest[2];
        int published = 0, field = 3;
        char *saved, *token = strtok_r(rest + 2, " \n", &saved);
        for (; token != NULL; token = strtok_r(NULL, " \n", &saved), field++) {
            if (field == FIELD_START_TICKS)
                *start_ticks = strtoull(token, NULL, 10);
            if (field == FIELD_ENV_END) {
                published = strcmp(token, "0") != 0;
                break;
            }
        }
        if (published || state == 'Z' || state == 'X')
            return 0;
        /* cmdline answers where the stat's field does not (a child that exec'd a setuid program). */
        snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
        if (read_small(path, buf, sizeof buf) > 0)
            return 0;
        struct timespec pause = {0, delay_ns};
        nanosleep(&pause, NULL);
        delay_ns = delay_ns * 2 > 1000000 ? 1000000 : delay_ns * 2;
    }
}

/* A NULL-terminated array of the list's bytes (borrowed), or NULL with an exception set. */
static char **c_strings(PyObject *list, const char *what)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    char **out = PyMem_Malloc(sizeof(char *) * (n + 1));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyBytes_Check(item) || strlen(PyBytes_AS_STRING(item)) != (size_t)PyBytes_GET_SIZE(item)) {
            PyErr_Format(PyExc_ValueError, "%s: every item must be bytes without a NUL", what);
            PyMem_Free(out);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    out[n] = NULL;
    return out;
}

PyDoc_STRVAR(spawn_logged_doc,
"spawn_logged(path, argv, envp, cwd, stdout_path, stderr_path) -> (pid, pidfd, start_ticks) | None\n\n"
"Start `path` in `cwd`, in a new session, stdin /dev/null and stdout/stderr appended to the\n"
"two files (created 0640), inheriting no other descriptor. Returns once /proc shows the new\n"
"argv. None: a log file could not be opened and nothing was started. OSError: the spawn\n"
"failed (with the exec's or chdir's errno), or the pidfd or /proc could not be read after it.");

static PyObject *spawn_logged(PyObject *self, PyObject *args)
{
    const char *path, *cwd, *stdout_path, *stderr_path;
    PyObject *argv_list, *envp_list;
    if (!PyArg_ParseTuple(args, "yO!O!yyy", &path, &PyList_Type, &argv_list, &PyList_Type, &envp_list,
                          &cwd, &stdout_path, &stderr_path))
        return NULL;
    char **argv = c_strings(argv_list, "argv");
    if (argv == NULL)
        return NULL;
    char **envp = c_strings(envp_list, "envp");
    if (envp == NULL) {
        PyMem_Free(argv);
        return NULL;
    }

    int logs_opened = 0, error = 0, pidfd = -1;
    pid_t pid = 0;
    unsigned long long start_ticks = 0;
    Py_BEGIN_ALLOW_THREADS
    int out = open_log(stdout_path);
    int err = out < 0 ? -1 : open_log(stderr_path);
    if (err >= 0) {
        logs_opened = 1;
        posix_spawn_file_actions_t actions;
        error = posix_spawn_file_actions_init(&actions);
        if (!error) {
            if (!(error = posix_spawn_file_actions_adddup2(&actions, out, 1))
                && !(error = posix_spawn_file_actions_adddup2(&actions, err, 2))
                && !(error = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0))
                && !(error = posix_spawn_file_actions_addclosefrom_np(&actions, 3))
                && !(error = posix_spawn_file_actions_addchdir_np(&actions, cwd)))
                error = posix_spawn(&pid, path, &actions, &spawn_attributes, argv, envp);
            posix_spawn_file_actions_destroy(&actions);
        }
        if (!error) {
            pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
            if (pidfd < 0 || pin(pid, &start_ticks) < 0)
                error = errno;
        }
    }
    if (out >= 0)
        close(out);
    if (err >= 0)
        close(err);
    Py_END_ALLOW_THREADS
    PyMem_Free(argv);
    PyMem_Free(envp);

    if (!logs_opened)
        Py_RETURN_NONE;
    if (error) {
        if (pidfd >= 0)
            close(pidfd);
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(iiK)", (int)pid, pidfd, start_ticks);
}

static PyMethodDef methods[] = {
    {"spawn_logged", spawn_logged, METH_VARARGS, spawn_logged_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_compiled_spawn", "A unit's direct start in one call (see _spawn.spawn_direct).", -1, methods,
};

PyMODINIT_FUNC PyInit__compiled_spawn(void)
{
    sigset_t none, catchable;
    sigemptyset(&none);
    sigfillset(&catchable);
    sigdelset(&catchable, SIGKILL);
    sigdelset(&catchable, SIGSTOP);
    int error = posix_spawnattr_init(&spawn_attributes);
    if (!error)
        error = posix_spawnattr_setsigmask(&spawn_attributes, &none);
    if (!error)
        error = posix_spawnattr_setsigdefault(&spawn_attributes, &catchable);
    if (!error)
        error = posix_spawnattr_setflags(&spawn_attributes, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSID);
    if (error) {
        PyErr_Format(PyExc_ImportError, "spawn attributes: %s", strerror(error));
        return NULL;
    }
    return PyModule_Create(&module);
}
