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

    /// <summary>The dashboard's files (pages, scripts, the vendored uPlot) are inside the published Dtrain.Coordinator.dll the image carries.</summary>
    [DockerFact]
    public async Task The_image_serves_the_dashboard_and_its_chart_library_on_8265()
    {
        image.EnsureBuilt(output);
        // Listening on every interface of the container: plaintext needs --insecure, and auth is on (auto, beyond loopback).
        var run = await DockerEngine.CheckAsync("run", "-d", "--rm", "-p", "127.0.0.1::8265", ImageFixture.Image, "serve", "--insecure");
        var id = run.Stdout.Trim();
        try
        {
            var mapped = (await DockerEngine.CheckAsync("port", id, "8265/tcp")).Stdout.Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)[0];
            var web = $"http://{mapped}";
            output.WriteLine($"dashboard at {web}");
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
            var deadline = DateTime.UtcNow.AddMinutes(2);
            HttpResponseMessage? chart = null;
            while (chart is null)
            {
                try
                {
                    chart = await http.GetAsync(web + "/static/vendor/uplot/uPlot.iife.min.js");
                }
                catch (HttpRequestException) when (DateTime.UtcNow < deadline)
                {
                    await Task.Delay(500);
                }
            }
            Assert.Equal(System.Net.HttpStatusCode.OK, chart.StatusCode);
            Assert.Contains("uPlot", await chart.Content.ReadAsStringAsync());
            Assert.Contains("MIT License", await http.GetStringAsync(web + "/static/vendor/uplot/LICENSE"));
            Assert.Equal(System.Net.HttpStatusCode.Unauthorized, (await http.GetAsync(web + "/api/jobs")).StatusCode);
        }
        finally
        {
            await DockerEngine.RunAsync("rm", "-f", id);
        }
    }
}
