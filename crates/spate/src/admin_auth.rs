//! `spate admin user ...` and `spate admin acl ...`: RocketMQ 2.0's user
//! and ACL administration (request codes 3001-3010). Changes go to every
//! name server given with `-n` and every master broker registered there
//! (slaves copy their master's); reads ask the first master, or the first
//! name server when no broker is registered. No read shows a password.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use spate_auth::{Acl, Action, Decision, Policy, PolicyEntry, PolicyType, Resource, User, UserStatus, UserType};
use spate_remoting::access::code;
use spate_remoting::{auth_admin, RemotingCommand};

use crate::admin::{Admin, Output};

#[derive(Subcommand)]
pub enum UserVerb {
    /// Create a user.
    Create {
        name: String,
        #[arg(long)]
        password: String,
        #[arg(long = "type", value_parser = ["Super", "Normal"], default_value = "Normal")]
        user_type: String,
    },
    /// Change a user's password, type or status.
    Update {
        name: String,
        #[arg(long)]
        password: Option<String>,
        #[arg(long = "type", value_parser = ["Super", "Normal"])]
        user_type: Option<String>,
        #[arg(long, value_parser = ["enable", "disable"])]
        status: Option<String>,
    },
    /// Delete a user and its ACL.
    Delete { name: String },
    /// One user (never its password).
    Get { name: String },
    /// Users whose name contains `--filter`.
    List {
        #[arg(long)]
        filter: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AclVerb {
    /// Give a subject a policy entry per resource (refused when it has an ACL: use update).
    Create(AclSpec),
    /// Add or replace entries of a subject's ACL.
    Update(AclSpec),
    /// Delete a subject's ACL, or only its entries for `--resource`.
    Delete {
        #[arg(long)]
        subject: String,
        #[arg(long)]
        resource: Option<String>,
    },
    Get {
        #[arg(long)]
        subject: String,
    },
    List {
        #[arg(long)]
        subject_filter: Option<String>,
        #[arg(long)]
        resource_filter: Option<String>,
    },
    /// Import an ACL 1.0 `plain_acl.yml` once: accounts become users,
    /// their permissions policies. Existing users are left as they are.
    Import { file: std::path::PathBuf },
}

#[derive(clap::Args)]
pub struct AclSpec {
    /// `User:NAME`.
    #[arg(long)]
    subject: String,
    /// `Topic:T,Topic:prefix*,Group:G,Cluster,*`.
    #[arg(long, value_delimiter = ',')]
    resources: Vec<String>,
    /// `Pub,Sub,Create,Update,Delete,Get,List,All`.
    #[arg(long, value_delimiter = ',')]
    actions: Vec<String>,
    /// Source addresses or CIDRs (default: any).
    #[arg(long = "source-ips", value_delimiter = ',')]
    source_ips: Vec<String>,
    #[arg(long, value_parser = ["Allow", "Deny"], default_value = "Allow")]
    decision: String,
}

impl AclSpec {
    fn acl(&self) -> Result<Acl> {
        let actions = self.actions.iter().map(|a| a.parse::<Action>()).collect::<Result<Vec<_>, _>>()?;
        let source_ips = self.source_ips.iter().map(|s| s.parse()).collect::<Result<Vec<_>, _>>()?;
        let decision: Decision = self.decision.parse()?;
        if self.resources.is_empty() || actions.is_empty() {
            bail!("--resources and --actions name at least one each");
        }
        let entries = self
            .resources
            .iter()
            .map(|r| {
                Ok(PolicyEntry {
                    resource: r.parse::<Resource>()?,
                    actions: actions.clone(),
                    source_ips: source_ips.clone(),
                    decision,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let acl =
            Acl { subject: self.subject.clone(), policies: vec![Policy { policy_type: PolicyType::Custom, entries }] };
        acl.validate()?;
        Ok(acl)
    }
}

/// Where user and ACL changes go: every name server, every master.
async fn targets(admin: &Admin) -> Result<Vec<String>> {
    let mut all = admin.namesrvs.clone();
    if let Ok(masters) = admin.masters(None).await {
        all.extend(masters.into_iter().map(|(_, addr)| addr));
    }
    Ok(all)
}

/// Sends a change everywhere; every target must accept it.
async fn apply(admin: &Admin, req: RemotingCommand) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for addr in targets(admin).await? {
        admin.call(&addr, req.clone()).await?;
        done.push(addr);
    }
    Ok(done)
}

/// Asks the first master, or the first name server.
async fn read(admin: &Admin, req: RemotingCommand) -> Result<Value> {
    let addr = match admin.masters(None).await {
        Ok(m) if !m.is_empty() => m[0].1.clone(),
        _ => admin.namesrvs[0].clone(),
    };
    let r = admin.call(&addr, req).await?;
    serde_json::from_slice(&r.body).with_context(|| format!("{addr} answered a body that is not JSON"))
}

fn applied(what: String, done: Vec<String>) -> Output {
    let table = format!("{what} on {}\n", done.join(", "));
    (json!({ "done": what, "on": done }), table)
}

pub async fn user(admin: &Admin, verb: UserVerb) -> Result<Output> {
    match verb {
        UserVerb::Create { name, password, user_type } => {
            let user = User {
                username: name.clone(),
                password: Some(password),
                user_type: if user_type == "Super" { UserType::Super } else { UserType::Normal },
                user_status: UserStatus::Enable,
            };
            user.validate()?;
            Ok(applied(format!("user {name} created"), apply(admin, auth_admin::create_user_request(&user)).await?))
        }
        UserVerb::Update { name, password, user_type, status } => {
            let mut update = json!({ "username": name });
            if let Some(p) = password {
                update["password"] = json!(p);
            }
            if let Some(t) = user_type {
                update["userType"] = json!(t);
            }
            if let Some(s) = status {
                update["userStatus"] = json!(s);
            }
            let req = auth_admin::update_user_request(&update, &name);
            Ok(applied(format!("user {name} updated"), apply(admin, req).await?))
        }
        UserVerb::Delete { name } => {
            let req = RemotingCommand::request(code::AUTH_DELETE_USER).with("username", &name);
            Ok(applied(format!("user {name} deleted"), apply(admin, req).await?))
        }
        UserVerb::Get { name } => {
            let v = read(admin, RemotingCommand::request(code::AUTH_GET_USER).with("username", &name)).await?;
            let table = users_table(std::slice::from_ref(&v));
            Ok((v, table))
        }
        UserVerb::List { filter } => {
            let req = RemotingCommand::request(code::AUTH_LIST_USER).with_opt("filter", filter);
            let v = read(admin, req).await?;
            let table = users_table(v.as_array().map(Vec::as_slice).unwrap_or_default());
            Ok((v, table))
        }
    }
}

fn users_table(users: &[Value]) -> String {
    let mut t = format!("{:<32} {:<8} {:<8}\n", "USER", "TYPE", "STATUS");
    for u in users {
        let s = |k: &str| u[k].as_str().unwrap_or("-").to_string();
        t += &format!("{:<32} {:<8} {:<8}\n", s("username"), s("userType"), s("userStatus"));
    }
    t
}

pub async fn acl(admin: &Admin, verb: AclVerb) -> Result<Output> {
    match verb {
        AclVerb::Create(spec) => {
            let acl = spec.acl()?;
            let done = apply(admin, auth_admin::put_acl_request(&acl, true)).await?;
            Ok(applied(format!("ACL of {} created", acl.subject), done))
        }
        AclVerb::Update(spec) => {
            let acl = spec.acl()?;
            let done = apply(admin, auth_admin::put_acl_request(&acl, false)).await?;
            Ok(applied(format!("ACL of {} updated", acl.subject), done))
        }
        AclVerb::Delete { subject, resource } => {
            let req = RemotingCommand::request(code::AUTH_DELETE_ACL)
                .with("subject", &subject)
                .with_opt("resource", resource);
            Ok(applied(format!("ACL of {subject} deleted"), apply(admin, req).await?))
        }
        AclVerb::Get { subject } => {
            let v = read(admin, RemotingCommand::request(code::AUTH_GET_ACL).with("subject", &subject)).await?;
            let table = acls_table(std::slice::from_ref(&v));
            Ok((v, table))
        }
        AclVerb::List { subject_filter, resource_filter } => {
            let req = RemotingCommand::request(code::AUTH_LIST_ACL)
                .with_opt("subjectFilter", subject_filter)
                .with_opt("resourceFilter", resource_filter);
            let v = read(admin, req).await?;
            let table = acls_table(v.as_array().map(Vec::as_slice).unwrap_or_default());
            Ok((v, table))
        }
        AclVerb::Import { file } => import(admin, &file).await,
    }
}

fn acls_table(acls: &[Value]) -> String {
    let mut t = format!(
        "{:<24} {:<8} {:<28} {:<24} {:<8} {}\n",
        "SUBJECT", "POLICY", "RESOURCE", "ACTIONS", "DECISION", "SOURCE"
    );
    for a in acls {
        let Ok(acl) = serde_json::from_value::<Acl>(a.clone()) else { continue };
        for p in &acl.policies {
            for e in &p.entries {
                let actions: Vec<String> = e.actions.iter().map(|a| format!("{a:?}")).collect();
                let ips = serde_json::to_value(&e.source_ips).unwrap_or_default();
                t += &format!(
                    "{:<24} {:<8} {:<28} {:<24} {:<8} {}\n",
                    acl.subject,
                    format!("{:?}", p.policy_type),
                    e.resource.to_string(),
                    actions.join(","),
                    format!("{:?}", e.decision),
                    if e.source_ips.is_empty() { "any".to_string() } else { ips.to_string() }
                );
            }
        }
    }
    t
}

async fn import(admin: &Admin, file: &std::path::Path) -> Result<Output> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let imported = spate_auth::plain_acl::parse(&text)?;
    let mut created = Vec::new();
    let mut skipped = Vec::new();
    for (user, acl) in imported.users.iter().zip(&imported.acls) {
        let exists = read(admin, RemotingCommand::request(code::AUTH_GET_USER).with("username", &user.username)).await;
        if exists.is_ok() {
            skipped.push(user.username.clone());
            continue;
        }
        apply(admin, auth_admin::create_user_request(user)).await?;
        apply(admin, auth_admin::put_acl_request(acl, false)).await?;
        created.push(user.username.clone());
    }
    let mut table =
        format!("imported users: {}\nskipped (already exist): {}\n", created.join(", "), skipped.join(", "));
    for note in &imported.notes {
        table += &format!("not imported: {note}\n");
    }
    Ok((json!({ "created": created, "skipped": skipped, "notes": imported.notes }), table))
}
