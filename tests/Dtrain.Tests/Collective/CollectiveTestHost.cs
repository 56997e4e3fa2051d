using System.Net;
using Dtrain.Collective;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Collective;

/// <summary>An in-process host of the collective service on 127.0.0.1 (any free port), as a worker hosts it: the ring tests of every transport start theirs here.</summary>
internal static class CollectiveTestHost
{
    public static async Task<WebApplication> StartAsync(int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.AddDtrainCollective(new IPEndPoint(IPAddress.Loopback, 0), maxPieceFloats);
        var app = builder.Build();
        app.MapDtrainCollective();
        await app.StartAsync();
        return app;
    }
}
