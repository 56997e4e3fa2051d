using Xunit.Abstractions;
using Xunit.Sdk;

namespace Dtrain.E2E.Support;

/// <summary>
/// Builds the image every E2E test runs (<see cref="Image"/>) once per test run, with scripts/image.sh. The first
/// test prints the build's output; the others say it was built. A failed build fails every test with its output.
/// </summary>
public sealed class ImageFixture(IMessageSink diagnostics) : IAsyncLifetime
{
    /// <summary>dtrain:e2e, or $DTRAIN_E2E_IMAGE (a tag of its own when several checkouts share one Docker engine).</summary>
    public static readonly string Image = Environment.GetEnvironmentVariable("DTRAIN_E2E_IMAGE") is { Length: > 0 } tag ? tag : "dtrain:e2e";

    readonly object gate = new();
    ProcessResult? build;
    string? failure;
    bool printed;

    public async Task InitializeAsync()
    {
        if (!DockerEngine.Available)
        {
            // The tests are skipped (or, when Docker is required, fail with this message).
            failure = $"no Docker engine, and CI or DTRAIN_REQUIRE_DOCKER=1 make these tests required: run scripts/docker-setup.sh as root, or start Docker ({DockerEngine.Detail})";
            return;
        }
        try
        {
            build = await ProcessRunner.RunAsync("bash", [RepoFiles.PathOf("scripts", "image.sh")], TimeSpan.FromMinutes(20), RepoFiles.Root,
                new Dictionary<string, string> { ["DTRAIN_IMAGE"] = Image }).ConfigureAwait(false);
            if (build.ExitCode != 0) failure = $"scripts/image.sh failed:\n{build}";
        }
        catch (TimeoutException e)
        {
            failure = $"scripts/image.sh did not finish: {e.Message}";
        }
        diagnostics.OnMessage(new DiagnosticMessage($"E2E image {Image}: {(failure ?? build!.ToString())}"));
    }

    public Task DisposeAsync() => Task.CompletedTask;

    /// <summary>Prints the build (its full output the first time) and fails the calling test when there is no image.</summary>
    public void EnsureBuilt(ITestOutputHelper output)
    {
        lock (gate)
        {
            if (failure is not null)
            {
                output.WriteLine(failure);
                Assert.Fail(failure);
            }
            if (!printed)
            {
                output.WriteLine($"built {Image} once for this run with scripts/image.sh:\n{build}");
                printed = true;
            }
            else output.WriteLine($"{Image} was built by scripts/image.sh earlier in this run ({build!.Elapsed.TotalSeconds:F0} s)");
        }
    }
}

/// <summary>Every E2E test is in this collection: the image is built once, and the tests run one at a time (2 cores).</summary>
[CollectionDefinition(Name)]
public sealed class DockerCollection : ICollectionFixture<ImageFixture>
{
    public const string Name = "docker";
}
