using Dtrain.Protos.Membership;
using Grpc.Core;

namespace Dtrain.Server;

/// <summary>Register, heartbeat, leave: a thin adapter over <see cref="WorkerRegistry"/>.</summary>
public sealed class MembershipService(WorkerRegistry registry, CoordinatorOptions options) : Membership.MembershipBase
{
    public override Task<RegisterReply> Register(RegisterRequest request, ServerCallContext context)
    {
        WorkerRecord w;
        try
        {
            w = registry.Register(request);
        }
        catch (WorkerNameTakenException e)
        {
            throw new RpcException(new Status(StatusCode.AlreadyExists, e.Message));
        }
        catch (ClusterFullException e)
        {
            throw new RpcException(new Status(StatusCode.ResourceExhausted, e.Message));
        }
        return Task.FromResult(new RegisterReply { WorkerId = w.Id, HeartbeatIntervalMs = options.HeartbeatIntervalMs, Token = w.Token });
    }

    public override Task<HeartbeatReply> Heartbeat(HeartbeatRequest request, ServerCallContext context)
    {
        var known = registry.Heartbeat(request.WorkerId, request.Token, out var cordoned);
        return Task.FromResult(new HeartbeatReply { Known = known, Cordoned = cordoned });
    }

    public override Task<LeaveReply> Leave(LeaveRequest request, ServerCallContext context)
    {
        registry.Leave(request.WorkerId, request.Token, string.IsNullOrWhiteSpace(request.Reason) ? "no reason given" : request.Reason);
        return Task.FromResult(new LeaveReply());
    }
}
