"""Who someone is: tokens, passwords, the directory of users and talkgroups."""
