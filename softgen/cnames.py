"""Which names a generated kernel may take: its name is an exported C symbol, a file stem and
the stem of its header's macros (``<NAME>_OK``, ...), so it must not collide with anything a C
or C++ program around it, or the generated code, declares.

The check is pure Python, never a compiler run: whether a name is valid must not depend on the
machine (a library is often built for another one), and a bad name is a usage error, not a
build failure. Four sources:

- C and C++ keywords (the header is C++-includable) and the identifiers the C standard reserves
  (leading ``_``; its future-library families: ``E[0-9A-Z]``, ``SIG[A-Z]``, ``*_t``, ...);
- every identifier of the code softgen generates, derived from the templates and each target's
  ISA header (``V_LOAD``, ``VEC``, ``sg_*``, the entry's parameters ``x``, ``y``, ``n``...);
- C library names (``LIBC`` below): an exported ``puts`` would replace libc's for the whole
  host program, ``expf`` or ``NULL`` break the generated code or the header;
- macros compilers predefine without a leading underscore in GNU mode (``linux``, ``unix``):
  they turn ``int linux(...)`` into ``int 1(...)`` in the host program.
"""
from __future__ import annotations

import functools
import re

from ._data import data_dir
from .render import isa_header
from .targets import all_targets

CPP_KEYWORDS = set("""alignas alignof and and_eq asm auto bitand bitor bool break case catch char
char8_t char16_t char32_t class compl concept const consteval constexpr constinit const_cast continue
co_await co_return co_yield decltype default delete do double dynamic_cast else enum explicit export
extern false float for friend goto if inline int long mutable namespace new noexcept not not_eq
nullptr operator or or_eq private protected public register reinterpret_cast requires restrict
return short signed sizeof static static_assert static_cast struct switch template this
thread_local throw true try typedef typeid typename typeof typeof_unqual union unsigned using
virtual void volatile wchar_t while xor xor_eq""".split())

# gcc/clang in GNU mode (the default), on the architectures softgen targets and their relatives
PREDEFINED = set("linux unix i386 i486 i586 i686 sun sparc mips vax m68k mc68000 arm".split())

# C17 7.1.3 and 7.31 (future library directions), POSIX's *_t
RESERVED = re.compile(r"_|E[0-9A-Z]|FE_[A-Z]|(PRI|SCN)[a-zX]|LC_[A-Z]|SIG_?[A-Z]|ATOMIC_[A-Z]"
                      r"|TIME_[A-Z]|(FLT|DBL|LDBL)_[A-Z]|U?INT\w*_(MAX|MIN|WIDTH|C)$"
                      r"|(atomic|memory_order|cnd|mtx|thrd|tss)_|\w*_t$")

# The functions, objects, types and macros the ISO C and POSIX headers declare (glibc), less the
# RESERVED families: libc/libm's exported symbols that `gcc -std=c17 -D_POSIX_C_SOURCE=200809L -E`
# of every C17 header plus unistd, fcntl, sys/{types,stat,mman}, pthread, dlfcn and strings
# declares, its `-dM` macros and its typedef names (none starting with '_').
LIBC = set("""
AIO_PRIO_DELTA_MAX AT_EACCESS AT_FDCWD AT_REMOVEDIR AT_SYMLINK_FOLLOW AT_SYMLINK_NOFOLLOW
BC_BASE_MAX BC_DIM_MAX BC_SCALE_MAX BC_STRING_MAX BUFSIZ BUS_ADRALN BUS_ADRERR BUS_MCEERR_AO
BUS_MCEERR_AR BUS_OBJERR CHARCLASS_NAME_MAX CHAR_BIT CHAR_MAX CHAR_MIN CLD_CONTINUED CLD_DUMPED
CLD_EXITED CLD_KILLED CLD_STOPPED CLD_TRAPPED CLOCKS_PER_SEC CLOCK_BOOTTIME CLOCK_BOOTTIME_ALARM
CLOCK_MONOTONIC CLOCK_MONOTONIC_COARSE CLOCK_MONOTONIC_RAW CLOCK_PROCESS_CPUTIME_ID CLOCK_REALTIME
CLOCK_REALTIME_ALARM CLOCK_REALTIME_COARSE CLOCK_TAI CLOCK_THREAD_CPUTIME_ID CMPLX CMPLXF CMPLXL
COLL_WEIGHTS_MAX DECIMAL_DIG DELAYTIMER_MAX FD_CLOEXEC FILE FILENAME_MAX FOPEN_MAX FPE_CONDTRAP
FPE_FLTDIV FPE_FLTINV FPE_FLTOVF FPE_FLTRES FPE_FLTSUB FPE_FLTUND FPE_FLTUNK FPE_INTDIV FPE_INTOVF
FP_ILOGB0 FP_ILOGBNAN FP_INFINITE FP_NAN FP_NORMAL FP_SUBNORMAL FP_ZERO F_DUPFD F_DUPFD_CLOEXEC
F_EXLCK F_GETFD F_GETFL F_GETLK F_GETLK64 F_GETOWN F_OK F_RDLCK F_SETFD F_SETFL F_SETLK F_SETLK64
F_SETLKW F_SETLKW64 F_SETOWN F_SHLCK F_UNLCK F_WRLCK HOST_NAME_MAX HUGE_VAL HUGE_VALF HUGE_VALL I
ILL_BADIADDR ILL_BADSTK ILL_COPROC ILL_ILLADR ILL_ILLOPC ILL_ILLOPN ILL_ILLTRP ILL_PRVOPC
ILL_PRVREG INFINITY LINE_MAX LLONG_MAX LLONG_MIN LOGIN_NAME_MAX LONG_MAX LONG_MIN L_ctermid
L_tmpnam MAP_FAILED MAP_FIXED MAP_PRIVATE MAP_SHARED MATH_ERREXCEPT MATH_ERRNO MAX_CANON MAX_INPUT
MB_CUR_MAX MB_LEN_MAX MCL_CURRENT MCL_FUTURE MCL_ONFAULT MQ_PRIO_MAX MS_ASYNC MS_INVALIDATE MS_SYNC
NAME_MAX NAN NGROUPS_MAX NULL ONCE_FLAG_INIT O_ACCMODE O_APPEND O_ASYNC O_CLOEXEC O_CREAT
O_DIRECTORY O_DSYNC O_EXCL O_FSYNC O_NDELAY O_NOCTTY O_NOFOLLOW O_NONBLOCK O_RDONLY O_RDWR O_RSYNC
O_SYNC O_TRUNC O_WRONLY PATH_MAX PIPE_BUF POLL_ERR POLL_HUP POLL_IN POLL_MSG POLL_OUT POLL_PRI
POSIX_FADV_DONTNEED POSIX_FADV_NOREUSE POSIX_FADV_NORMAL POSIX_FADV_RANDOM POSIX_FADV_SEQUENTIAL
POSIX_FADV_WILLNEED POSIX_MADV_DONTNEED POSIX_MADV_NORMAL POSIX_MADV_RANDOM POSIX_MADV_SEQUENTIAL
POSIX_MADV_WILLNEED PROT_EXEC PROT_GROWSDOWN PROT_GROWSUP PROT_NONE PROT_READ PROT_WRITE
PTHREAD_BARRIER_SERIAL_THREAD PTHREAD_CANCELED PTHREAD_CANCEL_ASYNCHRONOUS PTHREAD_CANCEL_DEFERRED
PTHREAD_CANCEL_DISABLE PTHREAD_CANCEL_ENABLE PTHREAD_COND_INITIALIZER PTHREAD_CREATE_DETACHED
PTHREAD_CREATE_JOINABLE PTHREAD_DESTRUCTOR_ITERATIONS PTHREAD_EXPLICIT_SCHED PTHREAD_INHERIT_SCHED
PTHREAD_KEYS_MAX PTHREAD_MUTEX_INITIALIZER PTHREAD_ONCE_INIT PTHREAD_PROCESS_PRIVATE
PTHREAD_PROCESS_SHARED PTHREAD_RWLOCK_INITIALIZER PTHREAD_SCOPE_PROCESS PTHREAD_SCOPE_SYSTEM
PTHREAD_STACK_MIN PTRDIFF_MAX PTRDIFF_MIN RAND_MAX RE_DUP_MAX RTLD_BINDING_MASK RTLD_DEEPBIND
RTLD_DEFAULT RTLD_GLOBAL RTLD_LAZY RTLD_LOCAL RTLD_NEXT RTLD_NODELETE RTLD_NOLOAD RTLD_NOW
RTSIG_MAX R_OK SA_NOCLDSTOP SA_NOCLDWAIT SA_NODEFER SA_RESETHAND SA_RESTART SA_SIGINFO SCHAR_MAX
SCHAR_MIN SCHED_FIFO SCHED_OTHER SCHED_RR SEEK_CUR SEEK_END SEEK_SET SEGV_ACCADI SEGV_ACCERR
SEGV_ADIDERR SEGV_ADIPERR SEGV_BNDERR SEGV_MAPERR SEGV_MTEAERR SEGV_MTESERR SEGV_PKUERR
SEM_VALUE_MAX SHRT_MAX SHRT_MIN SIZE_MAX SI_ASYNCIO SI_ASYNCNL SI_DETHREAD SI_KERNEL SI_MESGQ
SI_QUEUE SI_SIGIO SI_TIMER SI_TKILL SI_USER SSIZE_MAX STDERR_FILENO STDIN_FILENO STDOUT_FILENO
S_IFBLK S_IFCHR S_IFDIR S_IFIFO S_IFLNK S_IFMT S_IFREG S_IFSOCK S_IRGRP S_IROTH S_IRUSR S_IRWXG
S_IRWXO S_IRWXU S_ISBLK S_ISCHR S_ISDIR S_ISFIFO S_ISGID S_ISLNK S_ISREG S_ISSOCK S_ISUID S_IWGRP
S_IWOTH S_IWUSR S_IXGRP S_IXOTH S_IXUSR S_TYPEISMQ S_TYPEISSEM S_TYPEISSHM TIMER_ABSTIME TMP_MAX
TSS_DTOR_ITERATIONS TTY_NAME_MAX UCHAR_MAX ULLONG_MAX ULONG_MAX USHRT_MAX UTIME_NOW UTIME_OMIT
WCHAR_MAX WCHAR_MIN WCONTINUED WEOF WEXITED WEXITSTATUS WIFCONTINUED WIFEXITED WIFSIGNALED
WIFSTOPPED WINT_MAX WINT_MIN WNOHANG WNOWAIT WSTOPPED WSTOPSIG WTERMSIG WUNTRACED W_OK
XATTR_LIST_MAX XATTR_NAME_MAX XATTR_SIZE_MAX X_OK abort abs access acos acosf acosh acoshf acoshl
acosl alarm alignas aligned_alloc alignof and and_eq asctime asctime_r asin asinf asinh asinhf
asinhl asinl assert atan atan2 atan2f atan2l atanf atanh atanhf atanhl atanl atof atoi atol atoll
bitand bitor bool bsearch btowc c16rtomb c32rtomb cabs cabsf cabsl cacos cacosf cacosh cacoshf
cacoshl cacosl call_once calloc carg cargf cargl casin casinf casinh casinhf casinhl casinl catan
catanf catanh catanhf catanhl catanl cbrt cbrtf cbrtl ccos ccosf ccosh ccoshf ccoshl ccosl ceil
ceilf ceill cexp cexpf cexpl chdir chmod chown cimag cimagf cimagl clearerr clock
clock_getcpuclockid clock_getres clock_gettime clock_nanosleep clock_settime clog clogf clogl close
compl complex confstr conj conjf conjl copysign copysignf copysignl cos cosf cosh coshf coshl cosl
cpow cpowf cpowl cproj cprojf cprojl creal crealf creall creat csin csinf csinh csinhf csinhl csinl
csqrt csqrtf csqrtl ctan ctanf ctanh ctanhf ctanhl ctanl ctermid ctime ctime_r difftime div dlclose
dlerror dlopen dlsym dprintf dup dup2 duplocale erf erfc erfcf erfcl erff erfl errno execl execle
execlp execv execve execvp exit exp exp2 exp2f exp2l expf expl expm1 expm1f expm1l fabs fabsf fabsl
faccessat false fchdir fchmod fchmodat fchown fchownat fclose fcntl fdatasync fdim fdimf fdiml
fdopen feclearexcept fegetenv fegetexceptflag fegetround feholdexcept feof feraiseexcept ferror
fesetenv fesetexceptflag fesetround fetestexcept feupdateenv fexecve fflush fgetc fgetpos fgets
fgetwc fgetws fileno flock flockfile floor floorf floorl fma fmaf fmal fmax fmaxf fmaxl fmemopen
fmin fminf fminl fmod fmodf fmodl fopen fork fpathconf fpclassify fprintf fputc fputs fputwc fputws
fread free freelocale freopen frexp frexpf frexpl fscanf fseek fseeko fsetpos fstat fstatat fsync
ftell ftello ftruncate ftrylockfile funlockfile futimens fwide fwprintf fwrite fwscanf getc
getc_unlocked getchar getchar_unlocked getcwd getdelim getegid getenv geteuid getgid getgroups
gethostname getline getlogin getlogin_r getopt getpgid getpgrp getpid getppid getsid getsubopt
getuid getwc getwchar gmtime gmtime_r hypot hypotf hypotl ilogb ilogbf ilogbl imaxabs imaxdiv
isalnum isalnum_l isalpha isalpha_l isatty isblank isblank_l iscntrl iscntrl_l isdigit isdigit_l
isfinite isgraph isgraph_l isgreater isgreaterequal isinf isless islessequal islessgreater islower
islower_l isnan isnormal isprint isprint_l ispunct ispunct_l isspace isspace_l isunordered isupper
isupper_l iswalnum iswalnum_l iswalpha iswalpha_l iswblank iswblank_l iswcntrl iswcntrl_l iswctype
iswctype_l iswdigit iswdigit_l iswgraph iswgraph_l iswlower iswlower_l iswprint iswprint_l iswpunct
iswpunct_l iswspace iswspace_l iswupper iswupper_l iswxdigit iswxdigit_l isxdigit isxdigit_l
jmp_buf kill kill_dependency labs lchown ldexp ldexpf ldexpl ldiv lgamma lgammaf lgammal link
linkat llabs lldiv llrint llrintf llrintl llround llroundf llroundl localeconv localtime
localtime_r log log10 log10f log10l log1p log1pf log1pl log2 log2f log2l logb logbf logbl logf logl
longjmp lrint lrintf lrintl lround lroundf lroundl lseek lstat malloc math_errhandling mblen mbrlen
mbrtoc16 mbrtoc32 mbrtowc mbsinit mbsnrtowcs mbsrtowcs mbstowcs mbtowc memchr memcmp memcpy memmove
memory_order memset mkdir mkdirat mkdtemp mkfifo mkfifoat mkstemp mktime mlock mlockall mmap modf
modff modfl mprotect msync munlock munlockall munmap nan nanf nanl nanosleep nearbyint nearbyintf
nearbyintl newlocale nextafter nextafterf nextafterl nexttoward nexttowardf nexttowardl noreturn
not not_eq offsetof once_flag open open_memstream open_wmemstream openat optarg opterr optind
optopt or or_eq pathconf pause pclose perror pipe popen posix_fadvise posix_fallocate posix_madvise
posix_memalign pow powf powl pread printf psiginfo psignal pthread_atfork pthread_attr_destroy
pthread_attr_getdetachstate pthread_attr_getguardsize pthread_attr_getinheritsched
pthread_attr_getschedparam pthread_attr_getschedpolicy pthread_attr_getscope pthread_attr_getstack
pthread_attr_getstackaddr pthread_attr_getstacksize pthread_attr_init pthread_attr_setdetachstate
pthread_attr_setguardsize pthread_attr_setinheritsched pthread_attr_setschedparam
pthread_attr_setschedpolicy pthread_attr_setscope pthread_attr_setstack pthread_attr_setstackaddr
pthread_attr_setstacksize pthread_barrier_destroy pthread_barrier_init pthread_barrier_wait
pthread_barrierattr_destroy pthread_barrierattr_getpshared pthread_barrierattr_init
pthread_barrierattr_setpshared pthread_cancel pthread_cleanup_pop pthread_cleanup_push
pthread_cond_broadcast pthread_cond_destroy pthread_cond_init pthread_cond_signal
pthread_cond_timedwait pthread_cond_wait pthread_condattr_destroy pthread_condattr_getclock
pthread_condattr_getpshared pthread_condattr_init pthread_condattr_setclock
pthread_condattr_setpshared pthread_create pthread_detach pthread_equal pthread_exit
pthread_getcpuclockid pthread_getschedparam pthread_getspecific pthread_join pthread_key_create
pthread_key_delete pthread_kill pthread_mutex_consistent pthread_mutex_destroy
pthread_mutex_getprioceiling pthread_mutex_init pthread_mutex_lock pthread_mutex_setprioceiling
pthread_mutex_timedlock pthread_mutex_trylock pthread_mutex_unlock pthread_mutexattr_destroy
pthread_mutexattr_getprioceiling pthread_mutexattr_getprotocol pthread_mutexattr_getpshared
pthread_mutexattr_getrobust pthread_mutexattr_gettype pthread_mutexattr_init
pthread_mutexattr_setprioceiling pthread_mutexattr_setprotocol pthread_mutexattr_setpshared
pthread_mutexattr_setrobust pthread_mutexattr_settype pthread_once pthread_rwlock_destroy
pthread_rwlock_init pthread_rwlock_rdlock pthread_rwlock_timedrdlock pthread_rwlock_timedwrlock
pthread_rwlock_tryrdlock pthread_rwlock_trywrlock pthread_rwlock_unlock pthread_rwlock_wrlock
pthread_rwlockattr_destroy pthread_rwlockattr_getkind_np pthread_rwlockattr_getpshared
pthread_rwlockattr_init pthread_rwlockattr_setkind_np pthread_rwlockattr_setpshared pthread_self
pthread_setcancelstate pthread_setcanceltype pthread_setschedparam pthread_setschedprio
pthread_setspecific pthread_sigmask pthread_spin_destroy pthread_spin_init pthread_spin_lock
pthread_spin_trylock pthread_spin_unlock pthread_testcancel putc putc_unlocked putchar
putchar_unlocked puts putwc putwchar pwrite qsort quick_exit raise rand rand_r read readlink
readlinkat realloc remainder remainderf remainderl remove remquo remquof remquol rename renameat
rewind rint rintf rintl rmdir round roundf roundl sa_handler sa_sigaction scalbln scalblnf scalblnl
scalbn scalbnf scalbnl scanf sched_get_priority_max sched_get_priority_min sched_getparam
sched_getscheduler sched_priority sched_rr_get_interval sched_setparam sched_setscheduler
sched_yield setbuf setegid setenv seteuid setgid setjmp setlocale setpgid setsid setuid setvbuf
shm_open shm_unlink si_addr si_addr_lsb si_arch si_band si_call_addr si_fd si_int si_lower
si_overrun si_pid si_pkey si_ptr si_status si_stime si_syscall si_timerid si_uid si_upper si_utime
si_value sigaction sigaddset sigdelset sigemptyset sigev_notify_attributes sigev_notify_function
sigfillset sigismember sigjmp_buf siglongjmp signal signbit sigpending sigprocmask sigqueue
sigsetjmp sigsuspend sigtimedwait sigwait sigwaitinfo sin sinf sinh sinhf sinhl sinl sleep snprintf
sprintf sqrt sqrtf sqrtl srand sscanf st_atime st_ctime st_mtime stat static_assert stderr stdin
stdout stpcpy stpncpy strcasecmp strcasecmp_l strcat strchr strcmp strcoll strcoll_l strcpy strcspn
strdup strerror strerror_l strerror_r strftime strftime_l strlen strncasecmp strncasecmp_l strncat
strncmp strncpy strndup strnlen strpbrk strrchr strsignal strspn strstr strtod strtof strtoimax
strtok strtok_r strtol strtold strtoll strtoul strtoull strtoumax strxfrm strxfrm_l swprintf
swscanf symlink symlinkat sysconf system tan tanf tanh tanhf tanhl tanl tcgetpgrp tcsetpgrp tgamma
tgammaf tgammal thread_local time timer_create timer_delete timer_getoverrun timer_gettime
timer_settime timespec_get tmpfile tmpnam tolower tolower_l toupper toupper_l towctrans towctrans_l
towlower towlower_l towupper towupper_l true trunc truncate truncf truncl ttyname ttyname_r tzname
tzset umask ungetc ungetwc unlink unlinkat unsetenv uselocale utimensat va_arg va_copy va_end
va_list va_start vdprintf vfprintf vfscanf vfwprintf vfwscanf vprintf vscanf vsnprintf vsprintf
vsscanf vswprintf vswscanf vwprintf vwscanf wcpcpy wcpncpy wcrtomb wcscasecmp wcscasecmp_l wcscat
wcschr wcscmp wcscoll wcscoll_l wcscpy wcscspn wcsdup wcsftime wcslen wcsncasecmp wcsncasecmp_l
wcsncat wcsncmp wcsncpy wcsnlen wcsnrtombs wcspbrk wcsrchr wcsrtombs wcsspn wcsstr wcstod wcstof
wcstoimax wcstok wcstol wcstold wcstoll wcstombs wcstoul wcstoull wcstoumax wcsxfrm wcsxfrm_l wctob
wctomb wctrans wctrans_l wctype wctype_l wmemchr wmemcmp wmemcpy wmemmove wmemset wprintf write
wscanf xor xor_eq
""".split())


@functools.cache
def generated_identifiers() -> frozenset[str]:
    """Every identifier in softgen's templates (Jinja tags, comments, strings and #include lines
    removed) and in each target's rendered ISA header: the helpers, macros, typedefs and entry
    parameters a generated translation unit or header can contain."""
    texts = [p.read_text() for p in sorted(data_dir("templates").glob("*.j2"))]
    texts += [isa_header(t) for t in all_targets().values()]
    ids: set[str] = set()
    for text in texts:
        text = re.sub(r"\{#.*?#\}|\{\{.*?\}\}|\{%.*?%\}", " ", text, flags=re.S)
        text = re.sub(r"/\*.*?\*/|//[^\n]*|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'|#\s*include[^\n]*",
                      " ", text, flags=re.S)
        ids.update(re.findall(r"(?<![\w.#])[A-Za-z_]\w*", text))   # not in numbers, not directives
    return frozenset(ids)


def _clash(ident: str, patterns: bool = True) -> str | None:
    if ident in CPP_KEYWORDS:
        return "a C or C++ keyword"
    if ident == "main":
        return "the program's entry point"
    if patterns and RESERVED.match(ident):
        return "reserved by the C standard or POSIX (a leading '_', or a library prefix or suffix)"
    if ident in PREDEFINED:
        return "a macro C compilers predefine"
    if ident in LIBC:
        return "a C library name"
    if ident in generated_identifiers() or ident.lower().startswith("sg_"):
        return "an identifier of the generated code"
    return None


def name_clash(name: str, macro_suffixes=()) -> str | None:
    """Why ``name`` cannot be a kernel's name (None if it can): it, and the header macros
    ``<NAME>_<suffix>`` derived from it, must be free. The macros are checked against names
    that exist, not the reserved families: E[A-Z]... is errno's space, but no errno macro ends
    in _OK or _ENULL."""
    why = _clash(name)
    if why:
        return f"it is {why}"
    for ident in (f"{name.upper()}_{s}" for s in macro_suffixes):
        why = _clash(ident, patterns=False)
        if why:
            return f"its header macro {ident} is {why}"
    return None
