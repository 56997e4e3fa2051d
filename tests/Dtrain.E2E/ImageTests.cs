using Dtrain.E2E.Support;
using Xunit.Abstractions;

namespace Dtrain.E2E;

/// <summary>What the image promises besides running a cluster: non-root, tcmalloc, unpatched TorchSharp on a new enough libstdc++.</summary>
[Collection(DockerCollection.Name)]
public sealed class ImageTests(ImageFixture image, ITestOutputHelper output)
{
    [DockerFact]
    public async Task Image_runs_as_non_root_with_tcmalloc_and_needs_no_torch_compatibility_step()
    {
        image.EnsureBuilt(output);
        var probe = await DockerEngine.CheckAsync("run", "--rm", "--entrypoint", "sh", ImageFixture.Image, "-c",
            "id -u; id -g; echo \"$LD_PRELOAD\"; test -e \"$LD_PRELOAD\" && echo preload-exists; " +
            "ls /opt/dtrain/libglibcxx_compat.so 2>/dev/null || echo no-shim; " +
            "grep -c GLIBCXX_3.4.32 /usr/lib/x86_64-linux-gnu/libstdc++.so.6; ls /opt/dtrain/libLibTorchSharp.so");
        output.WriteLine(probe.Stdout);
        var lines = probe.Stdout.Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("10001", lines[0]);
        Assert.Equal("10001", lines[1]);
        Assert.EndsWith("libtcmalloc_minimal.so.4", lines[2]);
        Assert.Equal("preload-exists", lines[3]);
        // The build machine may need the libstdc++ shim; the image must not carry it: its own libstdc++ is GCC 13+.
        Assert.Equal("no-shim", lines[4]);
        Assert.NotEqual("0", lines[5]);
        Assert.Equal("/opt/dtrain/libLibTorchSharp.so", lines[6]);

        // The HEALTHCHECK and the version answer without a server around.
        var inspect = await DockerEngine.CheckAsync("image", "inspect", "-f", "{{json .Config.Healthcheck.Test}} {{json .Config.Entrypoint}}", ImageFixture.Image);
        Assert.Contains("\"dtrain\",\"health\"", inspect.Stdout);
        Assert.Contains("[\"dtrain\"]", inspect.Stdout);
    }
}
