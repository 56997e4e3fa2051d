using Dtrain.Protos.Membership;
using Grpc.Core;

namespace Dtrain.Server;

/// <summary>Register, heartbeat, leave: a thin adapter over <see cref="WorkerRegistry"/>.</summary>
public sealed class MembershipService(WorkerRegistry registry, CoordinatorOptions options) : Membership.MembershipBase
{
    public override Task<RegisterReply> Register(RegisterRequest request, ServerCallContext context)
    {
        var w = registry.Register(request);
        return Task.FromResult(new RegisterReply { WorkerId = w.Id, HeartbeatIntervalMs = options.HeartbeatIntervalMs, Token = w.Token });
    }

    public override Task<HeartbeatReply> Heartbeat(HeartbeatRequest request, ServerCallContext context) =>
        Task.FromResult(new HeartbeatReply { Known = registry.Heartbeat(request.WorkerId, request.Token) });

    public override Task<LeaveReply> Leave(LeaveRequest request, ServerCallContext context)
    {
        registry.Leave(request.WorkerId, request.Token, string.IsNullOrWhiteSpace(request.Reason) ? "no reason given" : request.Reason);
        return Task.FromResult(new LeaveReply());
    }
}
