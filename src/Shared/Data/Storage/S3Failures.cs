using System.Net;
using System.Net.Sockets;
using Amazon.Runtime;
using Amazon.S3;

namespace Dtrain.Data.Storage;

/// <summary>
/// What an S3 failure means for a dataset read: its description and whether trying again can help (unreachable,
/// 5xx, throttling, a timeout, a connection cut) or not (credentials refused, no such bucket or key, a bad range).
/// </summary>
public static class S3Failures
{
    /// <summary>Null for the caller's own cancellation (passed through unchanged).</summary>
    public static (string Problem, bool Transient)? Classify(Exception e, CancellationToken cancellationToken)
    {
        if (e is OperationCanceledException && cancellationToken.IsCancellationRequested) return null;
        switch (e)
        {
            case AmazonS3Exception s3:
                var code = s3.ErrorCode ?? "";
                var status = (int)s3.StatusCode;
                var detail = string.IsNullOrEmpty(code) ? $"HTTP {status}" : $"{code}, HTTP {status}";
                var message = string.IsNullOrEmpty(s3.Message) ? "" : $": {s3.Message}";
                if (code is "InvalidAccessKeyId" or "SignatureDoesNotMatch" or "AccessDenied" or "ExpiredToken" or "InvalidToken" or "TokenRefreshRequired"
                    || status is 401 or 403)
                    return ($"access refused ({detail}{message}); check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and their rights on the bucket", false);
                if (code == "NoSuchBucket") return ($"no such bucket ({detail})", false);
                if (code == "NoSuchKey" || status == 404) return ($"no such object ({detail})", false);
                if (code == "InvalidRange" || status == 416) return ($"range not satisfiable: the object is shorter than expected ({detail})", false);
                if (status >= 500 || status == 429 || code is "SlowDown" or "RequestTimeout" or "RequestTimeTooSkewed" or "InternalError")
                    return ($"server error ({detail}{message})", true);
                if (status == 0 && Unreachable(e) is { } lost) return ($"unreachable ({lost})", true);
                return ($"refused ({detail}{message})", false);
            case AmazonClientException client when Unreachable(client) is { } cause:
                return ($"unreachable ({cause})", true);
            case AmazonClientException client:
                return ($"S3 client error: {client.Message}", false);
            case OperationCanceledException or TimeoutException:
                return ("timed out", true);
            default:
                return Unreachable(e) is { } reason ? ($"unreachable ({reason})", true) : null;
        }
    }

    /// <summary>The innermost network cause in <paramref name="e"/>'s chain, or null when there is none.</summary>
    static string? Unreachable(Exception e)
    {
        string? found = null;
        for (Exception? x = e; x is not null; x = x.InnerException)
            if (x is HttpRequestException or IOException or SocketException or WebException or TimeoutException)
                found = x.Message;
        return found;
    }
}
