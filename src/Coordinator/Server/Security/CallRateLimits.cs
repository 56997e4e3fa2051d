using System.Globalization;
using System.Threading.RateLimiting;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Dtrain.Server;

/// <summary>
/// Per-client rate limits on job submission and worker registration (a token bucket per <see cref="ICallerIdentity"/>:
/// a burst, then an average rate per minute; a registration without a client certificate that carries a valid join
/// token counts against that token). A call over the limit ends with ResourceExhausted saying which limit,
/// for whom, and when to retry; other calls pass untouched.
/// </summary>
public sealed class CallRateLimits : Interceptor, IDisposable
{
    private sealed record Limit(PartitionedRateLimiter<string> Limiter, string What, string RateSetting, double PerMinute, string BurstSetting, int Burst);

    private readonly ICallerIdentity identity;
    private readonly CoordinatorSecurity? security;
    private readonly Dictionary<string, Limit> limits = new(StringComparer.Ordinal);

    public CallRateLimits(CoordinatorOptions options, ICallerIdentity identity, CoordinatorSecurity? security = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        this.identity = identity;
        this.security = security;
        Add($"/{Protos.Jobs.Jobs.Descriptor.FullName}/Submit", "job submissions", "Coordinator:SubmitsPerMinute", options.SubmitsPerMinute, "Coordinator:SubmitBurst", options.SubmitBurst);
        Add($"/{Protos.Membership.Membership.Descriptor.FullName}/Register", "worker registrations", "Coordinator:RegistrationsPerMinute", options.RegistrationsPerMinute, "Coordinator:RegistrationBurst", options.RegistrationBurst);
    }

    private void Add(string method, string what, string rateSetting, double perMinute, string burstSetting, int burst)
    {
        if (perMinute <= 0) return; // no limit
        var bucket = new TokenBucketRateLimiterOptions
        {
            TokenLimit = burst,
            TokensPerPeriod = 1,
            ReplenishmentPeriod = TimeSpan.FromMinutes(1 / perMinute),
            AutoReplenishment = true,
            QueueLimit = 0,
        };
        var limiter = PartitionedRateLimiter.Create<string, string>(caller => RateLimitPartition.GetTokenBucketLimiter(caller, _ => bucket));
        limits[method] = new Limit(limiter, what, rateSetting, perMinute, burstSetting, burst);
    }

    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(continuation);
        if (limits.TryGetValue(context.Method, out var limit))
        {
            var caller = request is Protos.Membership.RegisterRequest { JoinToken.Length: > 0 } register && Rpc.PeerIdentity.Of(context) is null && security?.JoinTokenKey(register.JoinToken) is { } joinToken
                ? joinToken
                : identity.Of(context);
            using var lease = limit.Limiter.AttemptAcquire(caller);
            if (!lease.IsAcquired)
            {
                var retry = lease.TryGetMetadata(MetadataName.RetryAfter, out var after) ? $"; retry in {Math.Ceiling(after.TotalSeconds).ToString(CultureInfo.InvariantCulture)} s" : "";
                throw new RpcException(new Status(StatusCode.ResourceExhausted,
                    $"too many {limit.What} from {caller}: at most {limit.Burst} at once ({limit.BurstSetting}) and {limit.PerMinute.ToString(CultureInfo.InvariantCulture)} per minute after that ({limit.RateSetting}){retry}"));
            }
        }
        return continuation(request, context);
    }

    public void Dispose()
    {
        foreach (var l in limits.Values) l.Limiter.Dispose();
    }
}
