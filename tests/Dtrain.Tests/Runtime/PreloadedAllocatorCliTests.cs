using Dtrain.Runtime;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Runtime;

/// <summary>The CLI as ./dtrain runs it: on tcmalloc (LD_PRELOAD), where native memory must never cross allocators.</summary>
public sealed class PreloadedAllocatorCliTests
{
    [Fact]
    public void Serve_with_a_data_root_comes_up_on_tcmalloc()
    {
        // realpath(path, NULL) mallocs through the preloaded tcmalloc; freeing that through a P/Invoke of libc's free
        // (glibc's own) crashed `serve --data-root` with a segmentation fault before it printed anything.
        var tcmalloc = NativeAllocator.Library();
        Assert.True(tcmalloc is not null, "no tcmalloc found: run scripts/setup.sh (Debian package libtcmalloc-minimal4)");
        using var tmp = new TempDir();
        var root = Path.Combine(tmp.Path, "data");
        Directory.CreateDirectory(root);
        var environment = new Dictionary<string, string?> { ["LD_PRELOAD"] = tcmalloc };
        foreach (var (how, args, env) in new (string, string[], Dictionary<string, string?>)[]
                 {
                     ("--data-root", ["--data-root", root], environment),
                     ("DTRAIN_Coordinator__DataRoots__0", [], new Dictionary<string, string?>(environment) { ["DTRAIN_Coordinator__DataRoots__0"] = root }),
                 })
        {
            var (ready, output) = CliRunner.RunUntil(tmp.Path, TimeSpan.FromMinutes(1), env, line => line.StartsWith("coordinator listening on ", StringComparison.Ordinal),
                ["serve", "--port", "0", "--http-port", "-1", "--data-dir", Path.Combine(tmp.Path, "c-" + how.Length), .. args]);
            Assert.True(ready, $"serve with {how} did not come up on tcmalloc: {output}");
        }
    }
}
