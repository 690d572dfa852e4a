#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// A child process started with posix_spawn and reaped with waitpid.
///
/// Foundation's `Process.waitUntilExit` can hang on Linux when called from the cooperative
/// pool; `pushfleet dev` and the tests only need spawn, signal and wait.
public final class ChildProcess: @unchecked Sendable {
    /// The child's process id.
    public let pid: pid_t
    private var exited = false

    /// Starts `executable` with `arguments`, its stdin, stdout and stderr on /dev/null (so an
    /// orphaned child never holds its parent's pipes open).
    public init(executable: String, arguments: [String]) throws {
        var pid: pid_t = 0
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        // The child must not inherit the parent's blocked signals (Dispatch blocks SIGTERM in
        // its threads), or it would ignore SIGTERM.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var files = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&files)
        defer { posix_spawn_file_actions_destroy(&files) }
        for descriptor: Int32 in [0, 1, 2] {
            posix_spawn_file_actions_addopen(&files, descriptor, "/dev/null", descriptor == 0 ? O_RDONLY : O_WRONLY, 0)
        }
        let result = posix_spawn(&pid, executable, &files, &attributes, argv, environ)
        guard result == 0 else { throw ChildProcessError(message: "cannot start \(executable): error \(result)") }
        self.pid = pid
    }

    /// Whether the child is still running (reaps it if it exited).
    public var isRunning: Bool {
        if exited { return false }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid { exited = true }
        return !exited
    }

    /// Sends `signal` and waits (up to `timeout` seconds, then SIGKILL) for the child to exit.
    public func stop(signal: Int32 = SIGTERM, timeout: Double = 5) {
        guard !exited else { return }
        kill(pid, signal)
        var waited = 0.0
        while isRunning {
            if waited >= timeout { kill(pid, SIGKILL) }
            usleep(10_000)
            waited += 0.01
        }
    }
}

/// A child process could not be started.
public struct ChildProcessError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
