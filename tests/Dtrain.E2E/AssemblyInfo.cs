using System.Runtime.CompilerServices;

// Container tests share 2 cores and one Docker engine: never two at once.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Dtrain.E2E;

internal static class E2EEnvironment
{
    /// <summary>
    /// Before any Testcontainers call: no reaper (its image cannot be pulled here); every test removes its own
    /// containers, networks and volumes instead.
    /// </summary>
    [ModuleInitializer]
    internal static void Init() => Environment.SetEnvironmentVariable("TESTCONTAINERS_RYUK_DISABLED", "true");
}
