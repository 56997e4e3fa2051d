using Dtrain.Rpc;
using Grpc.Core;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;

namespace Dtrain.Tests.Rpc;

/// <summary>The server interceptor times each call on the clock it is given (the system's by default).</summary>
public class ServerInterceptorTests
{
    [Fact]
    public async Task A_calls_logged_duration_is_read_from_the_given_clock()
    {
        var clock = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var log = new Lines();
        var interceptor = new ServerInterceptor(log, [], clock);

        var reply = await interceptor.UnaryServerHandler("ping", new Context("/dtrain.Test/Ping"), (request, _) =>
        {
            clock.Advance(TimeSpan.FromMilliseconds(250));
            return Task.FromResult(request + " pong");
        });

        Assert.Equal("ping pong", reply);
        Assert.Equal(["/dtrain.Test/Ping 250.0 ms"], log.Messages);
    }

    private sealed class Lines : ILogger<ServerInterceptor>
    {
        public List<string> Messages { get; } = [];

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Messages.Add(formatter(state, exception));
    }

    private sealed class Context(string method) : ServerCallContext
    {
        protected override string MethodCore => method;
        protected override string HostCore => "localhost";
        protected override string PeerCore => "ipv4:127.0.0.1:1";
        protected override DateTime DeadlineCore => DateTime.MaxValue;
        protected override Metadata RequestHeadersCore { get; } = [];
        protected override CancellationToken CancellationTokenCore => CancellationToken.None;
        protected override Metadata ResponseTrailersCore { get; } = [];
        protected override Status StatusCore { get; set; }
        protected override WriteOptions? WriteOptionsCore { get; set; }
        protected override AuthContext AuthContextCore { get; } = new(null, []);
        protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) => throw new NotSupportedException();
        protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => Task.CompletedTask;
    }
}
