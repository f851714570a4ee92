"""Shadow evaluation: the challenger scored on live traffic beside the champion, judged before approval."""
